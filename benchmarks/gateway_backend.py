#!/usr/bin/env python3
"""A zero-delay OpenAI-compatible engine stand-in for router overhead benchmarks.

It answers ``POST /v1/chat/completions`` and ``POST /v1/completions`` with a fixed completion
(JSON, or vLLM-shaped SSE frames when the body asks for ``"stream": true``, with the usage frame
when ``stream_options.include_usage`` is set), plus ``/health``, ``/v1/models`` and a minimal
``/metrics``. HTTP/1.1 keep-alive is parsed by hand on a bare asyncio protocol (uvloop when
available): the backend must cost far less CPU than any router in front of it, so the figures
measure the router, not the engine stand-in.

``--itl-ms`` spaces the token frames (chunked transfer encoding) to model a streaming engine;
the default 0 sends the whole answer at once.

    python benchmarks/gateway_backend.py --port 9001 [--tokens 16] [--itl-ms 0]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools

import orjson

MODEL = "bench-model"
_ids = itertools.count()


def _chat_frames(rid: str, n: int, usage: bool) -> list[bytes]:
    """vLLM's chat stream: a role frame, one frame per token, a finish frame, usage, [DONE]."""
    head = {"id": rid, "object": "chat.completion.chunk", "created": 1, "model": MODEL}
    frames = [{**head, "choices": [_delta({"role": "assistant", "content": ""}, None)]}]
    frames += [{**head, "choices": [_delta({"content": f" tok{i}"}, None)]} for i in range(n)]
    frames.append({**head, "choices": [_delta({"content": ""}, "length")]})
    if usage:
        frames.append({**head, "choices": [], "usage": _usage(n)})
    return [b"data: " + orjson.dumps(f) + b"\n\n" for f in frames] + [b"data: [DONE]\n\n"]


def _completion_frames(rid: str, n: int, usage: bool) -> list[bytes]:
    head = {"id": rid, "object": "text_completion", "created": 1, "model": MODEL}
    frames = [{**head, "choices": [_text(f" tok{i}", None)]} for i in range(n)]
    frames.append({**head, "choices": [_text("", "length")]})
    if usage:
        frames.append({**head, "choices": [], "usage": _usage(n)})
    return [b"data: " + orjson.dumps(f) + b"\n\n" for f in frames] + [b"data: [DONE]\n\n"]


def _delta(delta: dict, finish: str | None) -> dict:
    return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}


def _text(text: str, finish: str | None) -> dict:
    return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}


def _usage(n: int) -> dict:
    return {"prompt_tokens": 8, "total_tokens": 8 + n, "completion_tokens": n}


def _json_body(chat: bool, rid: str, n: int) -> bytes:
    text = "".join(f" tok{i}" for i in range(n))
    if chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": text}}
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": text}
        obj = "text_completion"
    choice.update(logprobs=None, finish_reason="length")
    body = {"id": rid, "object": obj, "created": 1, "model": MODEL}
    return orjson.dumps({**body, "choices": [choice], "usage": _usage(n)})


_METRICS = (
    b"# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running 0.0\n"
    b"# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting 0.0\n"
    b"# TYPE vllm:kv_cache_usage_perc gauge\nvllm:kv_cache_usage_perc 0.0\n"
)
_MODELS = orjson.dumps({"object": "list", "data": [{"id": MODEL, "object": "model"}]})


def _response(status: str, ctype: bytes, body: bytes) -> bytes:
    return (
        b"HTTP/1.1 " + status.encode() + b"\r\nContent-Type: " + ctype
        + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )  # fmt: skip


class _Conn(asyncio.Protocol):
    """One keep-alive connection: parse request heads and Content-Length bodies by hand."""

    tokens = 16
    itl = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end]
            length = _content_length(head)
            if len(self.buf) < end + 4 + length:
                return
            body = self.buf[end + 4 : end + 4 + length]
            self.buf = self.buf[end + 4 + length :]
            self._answer(head, body)

    def _answer(self, head: bytes, body: bytes) -> None:
        line = head[: head.find(b"\r\n")] if b"\r\n" in head else head
        method, _, rest = line.partition(b" ")
        path = rest.partition(b" ")[0]
        if method == b"GET":
            self._get(path)
            return
        try:
            req = orjson.loads(body) if body else {}
        except orjson.JSONDecodeError:
            self.transport.write(_response("400 Bad Request", b"application/json", b"{}"))
            return
        chat = path.endswith(b"/chat/completions")
        rid = f"cmpl-{next(_ids)}"
        n = int(req.get("max_tokens") or self.tokens)
        n = min(n, self.tokens)
        if not req.get("stream"):
            self.transport.write(_response("200 OK", b"application/json", _json_body(chat, rid, n)))
            return
        usage = bool((req.get("stream_options") or {}).get("include_usage"))
        frames = (_chat_frames if chat else _completion_frames)(rid, n, usage)
        self._stream(frames)

    def _get(self, path: bytes) -> None:
        if path == b"/metrics":
            self.transport.write(_response("200 OK", b"text/plain; version=0.0.4", _METRICS))
        elif path == b"/v1/models":
            self.transport.write(_response("200 OK", b"application/json", _MODELS))
        else:
            self.transport.write(_response("200 OK", b"text/plain", b""))

    def _stream(self, frames: list[bytes]) -> None:
        if self.itl <= 0:
            self.transport.write(_response("200 OK", b"text/event-stream", b"".join(frames)))
            return
        self.transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        self._send_next(iter(frames))

    def _send_next(self, frames) -> None:  # type: ignore[no-untyped-def]
        if self.transport.is_closing():
            return
        frame = next(frames, None)
        if frame is None:
            self.transport.write(b"0\r\n\r\n")
            return
        self.transport.write(f"{len(frame):x}\r\n".encode() + frame + b"\r\n")
        asyncio.get_running_loop().call_later(self.itl, self._send_next, frames)


def _content_length(head: bytes) -> int:
    lower = head.lower()
    i = lower.find(b"content-length:")
    if i < 0:
        return 0
    j = lower.find(b"\r\n", i)
    return int(lower[i + 15 : j if j >= 0 else None])


async def serve(host: str, port: int, tokens: int, itl_ms: float) -> None:
    _Conn.tokens, _Conn.itl = tokens, itl_ms / 1000
    server = await asyncio.get_running_loop().create_server(_Conn, host, port, backlog=1024)
    async with server:
        await server.serve_forever()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9001)
    ap.add_argument("--tokens", type=int, default=16, help="tokens per answer")
    ap.add_argument("--itl-ms", type=float, default=0.0, help="gap between streamed frames")
    args = ap.parse_args()
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.host, args.port, args.tokens, args.itl_ms))


if __name__ == "__main__":
    main()

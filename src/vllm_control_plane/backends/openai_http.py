"""Backend for vLLM (or any OpenAI-compatible server) over HTTP.

Every request is streamed from the engine, whatever the client asked for: the first content frame
is the first token, so TTFT and TPOT are measured here rather than guessed. The engine's SSE frames
are handed up unchanged (``TokenChunk.raw``) so the gateway can pass them through byte for byte.

Transport: the lean HTTP/1.1 client in :mod:`backends.http1` (keep-alive pool, SSE frames split
in bulk), about 2-5x cheaper per request than aiohttp's client (docs/benchmarks.md). Timeouts:
connect has its own; the first-token clock starts when the request is sent (so a server that
accepts and never answers is caught), then every gap between reads is bounded (stream idle) —
one timer per response. Leaving the stream early closes the connection, which makes vLLM abort
the request, as for any client disconnect. Every failure is reported as a :class:`Failed` event
whose ``kind`` says what went wrong (docs/reliability.md maps each onto a terminal state).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from typing import Any

import orjson
from prometheus_client.parser import text_string_to_metric_families

from vllm_control_plane.backends._timeout import bounded
from vllm_control_plane.backends.base import (
    Backend,
    BackendEvent,
    Failed,
    Finished,
    LoadSample,
    Timeouts,
    TokenChunk,
)
from vllm_control_plane.backends.http1 import (
    ConnectError,
    ConnectionPool,
    ConnectTimeout,
    HTTPClientError,
    ProtocolError,
    Response,
    ResponseTimeout,
)
from vllm_control_plane.types import DEFAULT_PROMPT_TOKENS, ExecutionInstance, RequestMetadata

# Scraped gauge/counter names, v1 first, legacy (pre-v1 / v0) second.
_RUNNING = ("vllm:num_requests_running",)
_WAITING = ("vllm:num_requests_waiting",)
_KV_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
_PREFIX_QUERIES = ("vllm:prefix_cache_queries", "vllm:gpu_prefix_cache_queries")
_PREFIX_HITS = ("vllm:prefix_cache_hits", "vllm:gpu_prefix_cache_hits")

# Token ids below 256 exist in every byte-level BPE vocabulary, so a synthetic prompt of them has
# exactly the requested length on any engine.
_SYNTHETIC_ID_RANGE = (10, 250)


def synthetic_prompt_ids(request_id: str, num_tokens: int) -> list[int]:
    """A prompt of exactly ``num_tokens`` token ids, different per request (no false cache hits)."""
    rng = random.Random(request_id)
    lo, hi = _SYNTHETIC_ID_RANGE
    return [rng.randrange(lo, hi) for _ in range(num_tokens)]


def build_request_body(instance: ExecutionInstance, request: RequestMetadata) -> tuple[str, dict]:
    """Map a RequestMetadata onto the engine's OpenAI endpoint and JSON body (always streamed)."""
    body: dict[str, Any] = dict(request.extra_body)
    body["model"] = instance.api_model_name
    if request.messages is not None:
        path = "/v1/chat/completions"
        body["messages"] = request.messages
    else:
        path = "/v1/completions"
        if request.prompt is not None:
            body["prompt"] = request.prompt
        elif "prompt" not in body:  # (an explicit extra_body prompt, e.g. token ids, is kept)
            n = request.prompt_tokens or DEFAULT_PROMPT_TOKENS
            body["prompt"] = synthetic_prompt_ids(request.request_id, n)
    optional = {
        "max_tokens": request.max_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "stop": request.stop,
        "user": request.user_id,
    }
    for key, value in optional.items():
        if value is not None:
            body.setdefault(key, value)
    if request.ignore_eos:
        body["ignore_eos"] = True
    body["stream"] = True
    body["stream_options"] = {"include_usage": True}
    return path, body


def _error_message(payload: bytes, status: int) -> str:
    try:
        err = orjson.loads(payload).get("error", {})
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
    except (orjson.JSONDecodeError, AttributeError):
        pass
    return f"engine answered HTTP {status}: {payload[:200]!r}"


class _StreamState:
    """What one SSE stream has produced so far."""

    __slots__ = ("cached", "completion_tokens", "finish_reason", "prompt_tokens", "usage_raw")

    def __init__(self) -> None:
        self.completion_tokens = 0
        self.prompt_tokens = 0
        self.cached = 0
        self.finish_reason: str | None = None
        self.usage_raw = b""


def _parse_frame(line: bytes, state: _StreamState) -> BackendEvent | None:
    """Turn one ``data: ...`` line into an event; updates usage bookkeeping in ``state``."""
    data = line[6:].strip()
    if data == b"[DONE]":
        return None
    obj = orjson.loads(data)
    if "error" in obj:
        err = obj["error"]
        message = err.get("message", str(err)) if isinstance(err, dict) else str(err)
        return Failed(
            f"engine error mid-stream: {message}",
            retryable=state.completion_tokens == 0,
            kind="stream_error",
        )
    usage = obj.get("usage")
    choices = obj.get("choices") or []
    if usage and not choices:
        state.prompt_tokens = usage.get("prompt_tokens", 0)
        state.completion_tokens = usage.get("completion_tokens", state.completion_tokens)
        details = usage.get("prompt_tokens_details") or {}
        state.cached = details.get("cached_tokens") or 0
        state.usage_raw = line + b"\n\n"
        return None
    if not choices:
        return None
    choice = choices[0]
    delta = choice.get("delta")
    text = (delta.get("content") or "") if delta is not None else (choice.get("text") or "")
    finish = choice.get("finish_reason")
    if finish:
        state.finish_reason = finish
    # Every frame goes up, the role frame too (num_tokens 0): passed on the moment it arrives,
    # it reaches the client as soon as through any proxy, and tool-call deltas are not lost.
    n = 1 if text or (delta is not None and _other_output(delta)) else 0
    state.completion_tokens += n
    return TokenChunk(text=text, num_tokens=n, raw=line + b"\n\n", finish_reason=finish or None)


def _other_output(delta: dict) -> bool:
    """A chat delta that generated something besides text (tool calls, reasoning)."""
    return any(v for k, v in delta.items() if k != "role" and k != "content")


class OpenAIHTTPBackend(Backend):
    """Talks to engines over their OpenAI-compatible HTTP API with one keep-alive pool."""

    def __init__(self, timeouts: Timeouts | None = None) -> None:
        self.timeouts = timeouts or Timeouts()
        self._pool: ConnectionPool | None = None

    async def start(self) -> None:
        if self._pool is None:
            self._pool = ConnectionPool(connect_timeout=self.timeouts.connect)

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    def set_timeouts(self, timeouts: Timeouts) -> None:
        """Use ``timeouts`` from now on (a config reload): requests sent from now on get them,
        and so do new connections; requests already sent keep the ones they started with."""
        self.timeouts = timeouts
        if self._pool is not None:
            self._pool.connect_timeout = timeouts.connect

    @property
    def pool(self) -> ConnectionPool:
        if self._pool is None:
            raise RuntimeError("OpenAIHTTPBackend.start() was not called")
        return self._pool

    def _headers(self, instance: ExecutionInstance, request: RequestMetadata) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "X-Request-Id": request.request_id}
        if instance.api_key:
            headers["Authorization"] = f"Bearer {instance.api_key}"
        return headers

    async def generate(
        self, instance: ExecutionInstance, request: RequestMetadata
    ) -> AsyncIterator[BackendEvent]:
        path, body = build_request_body(instance, request)
        state = _StreamState()
        t = self.timeouts
        try:
            resp = await self.pool.request(
                "POST",
                instance.base_url + path,
                orjson.dumps(body),
                self._headers(instance, request),
                first_timeout=t.first_token,
                idle_timeout=t.idle,
            )
            async with resp:  # leaving early (aclose, cancel) closes it: vLLM aborts the request
                if resp.status != 200:
                    yield await self._status_failure(resp)
                    return
                async for event in self._events(resp, state):
                    yield event
                    if isinstance(event, Failed):
                        return
        except HTTPClientError as exc:
            yield self._failure(exc, state)
            return
        yield self._ending(state)

    @staticmethod
    async def _events(resp: Response, state: _StreamState) -> AsyncIterator[BackendEvent]:
        async for frame in resp.sse_frames():
            if not frame.startswith(b"data:"):
                continue  # comments, event: lines
            try:
                event = _parse_frame(
                    frame if frame.startswith(b"data: ") else b"data: " + frame[5:], state
                )
            except (orjson.JSONDecodeError, AttributeError, TypeError) as exc:
                yield Failed(
                    f"malformed SSE frame from engine: {exc}",
                    retryable=state.completion_tokens == 0,
                    kind="protocol",
                )
                return
            if event is not None:
                yield event

    @staticmethod
    async def _status_failure(resp: Response) -> Failed:
        payload = await resp.read()
        return Failed(
            _error_message(payload, resp.status),
            retryable=resp.status >= 500 or resp.status == 429,
            status=resp.status,
            kind="http_status",
        )

    @staticmethod
    def _ending(state: _StreamState) -> BackendEvent:
        """The last event of a stream that ended without an exception."""
        if state.finish_reason is None:
            return Failed(
                "engine closed the stream before finishing",
                retryable=state.completion_tokens == 0,
                kind="protocol",
            )
        return Finished(
            finish_reason=state.finish_reason,
            prompt_tokens=state.prompt_tokens,
            completion_tokens=state.completion_tokens,
            cached_tokens=state.cached,
            raw_usage=state.usage_raw,
        )

    def _failure(self, exc: HTTPClientError, state: _StreamState) -> Failed:
        retryable = state.completion_tokens == 0
        if isinstance(exc, ConnectTimeout):
            return Failed(
                f"connect timeout ({self.timeouts.connect:g} s)", retryable=True, kind="connect"
            )
        if isinstance(exc, ConnectError):
            return Failed(f"cannot connect to engine: {exc}", retryable=True, kind="connect")
        if isinstance(exc, ResponseTimeout):
            what = "first token" if exc.phase == "first" else "stream idle"
            return Failed(
                f"{what} timeout ({exc.seconds:g} s)", retryable=retryable, kind="timeout"
            )
        if isinstance(exc, ProtocolError):
            return Failed(
                f"malformed response from engine: {exc}", retryable=retryable, kind="protocol"
            )
        return Failed(
            f"connection to engine lost: {exc or type(exc).__name__}",
            retryable=retryable,
            kind="connect",
        )

    async def _get(self, url: str, timeout: float) -> tuple[int, bytes] | None:
        """A bounded GET (connect included); None when it fails or times out."""
        try:
            async with bounded(timeout):
                return await self.pool.get(url)
        except (HTTPClientError, asyncio.TimeoutError):
            return None

    async def check_health(self, instance: ExecutionInstance) -> bool:
        answer = await self._get(instance.base_url + "/health", self.timeouts.health)
        return answer is not None and answer[0] == 200

    async def scrape(self, instance: ExecutionInstance) -> LoadSample | None:
        answer = await self._get(instance.base_url + "/metrics", self.timeouts.scrape)
        if answer is None or answer[0] != 200:
            return None
        with contextlib.suppress(ValueError, UnicodeDecodeError):
            return parse_load_sample(answer[1].decode())
        return None


def parse_load_sample(text: str) -> LoadSample:
    """Sum vLLM's gauges/counters over label sets (one engine may expose several engine labels)."""
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith(("_created", "_bucket", "_sum", "_count")):
                continue
            name = sample.name.removesuffix("_total")
            totals[name] = totals.get(name, 0.0) + float(sample.value)

    def first(names: tuple[str, ...]) -> float:
        return next((totals[n] for n in names if n in totals), 0.0)

    return LoadSample(
        num_requests_running=first(_RUNNING),
        num_requests_waiting=first(_WAITING),
        kv_cache_usage=first(_KV_USAGE),
        prefix_cache_queries=first(_PREFIX_QUERIES),
        prefix_cache_hits=first(_PREFIX_HITS),
        raw=totals,
    )

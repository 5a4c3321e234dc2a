"""Raw bytes on the wire: SSE framing, chunk and response shapes, simple endpoints."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families

from vllm_control_plane import tokenizer
from vllm_control_plane.sim.api_models import VLLM_VERSION
from vllm_control_plane.sim.launcher import SimServer
from vllm_control_plane.sim.types import EngineSpec

CHUNK_KEYS = ["id", "object", "created", "model", "choices", "usage"]
CHAT_CHUNK_KEYS = ["id", "object", "created", "model", "choices"]
USAGE_KEYS = ["prompt_tokens", "total_tokens", "completion_tokens"]


async def _post(srv: SimServer, path: str, body: dict, **kw) -> tuple[int, Any, bytes]:
    async with aiohttp.ClientSession() as s, s.post(srv.url + path, json=body, **kw) as r:
        return r.status, r.headers.copy(), await r.read()


def _frames(raw: bytes) -> list[bytes]:
    assert raw.endswith(b"data: [DONE]\n\n")
    parts = raw.split(b"\n\n")
    assert parts[-1] == b""
    assert all(p.startswith(b"data: ") for p in parts[:-1])
    return [p[6:] for p in parts[:-2]]  # JSON payloads, without [DONE]


def _compact(frame: bytes) -> dict:
    obj = orjson.loads(frame)
    assert orjson.dumps(obj) == frame  # compact JSON, no spaces, as vLLM's model_dump_json
    return obj


async def test_completion_stream_frames_and_usage_chunk(sim_server: SimServer) -> None:
    body = {"prompt": "a b c", "max_tokens": 5, "stream": True, "ignore_eos": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    status, headers, raw = await _post(sim_server, "/v1/completions", body)
    assert status == 200 and headers["Content-Type"] == "text/event-stream; charset=utf-8"
    frames = [_compact(f) for f in _frames(raw)]
    *content, usage = frames
    for f in content:
        assert list(f) == CHUNK_KEYS and f["usage"] is None and f["object"] == "text_completion"
        assert list(f["choices"][0]) == ["index", "text", "logprobs", "finish_reason",
                                         "stop_reason"]  # fmt: skip
    assert [f["choices"][0]["finish_reason"] for f in content][-1] == "length"
    assert list(usage) == CHUNK_KEYS and usage["choices"] == []
    assert list(usage["usage"]) == USAGE_KEYS
    prompt = tokenizer.count_tokens("a b c", add_bos=True)
    assert usage["usage"] == {"prompt_tokens": prompt, "total_tokens": prompt + 5,
                              "completion_tokens": 5}  # fmt: skip
    assert len({f["id"] for f in frames}) == 1 and frames[0]["id"].startswith("cmpl-")


async def test_chat_stream_role_chunk_then_content(sim_server: SimServer) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": True,
            "ignore_eos": True}  # fmt: skip
    _, _, raw = await _post(sim_server, "/v1/chat/completions", body)
    frames = [_compact(f) for f in _frames(raw)]
    role = frames[0]
    assert list(role) == CHAT_CHUNK_KEYS and role["object"] == "chat.completion.chunk"
    assert role["choices"] == [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                "logprobs": None, "finish_reason": None}]  # fmt: skip
    assert list(frames[1]["choices"][0]) == ["index", "delta", "logprobs", "finish_reason"]
    last = frames[-1]["choices"][0]
    assert list(last) == ["index", "delta", "logprobs", "finish_reason", "stop_reason"]
    assert last["finish_reason"] == "length" and last["stop_reason"] is None
    text = "".join(f["choices"][0]["delta"]["content"] for f in frames)
    assert tokenizer.count_tokens(text) == 3


async def test_continuous_usage_stats(sim_server: SimServer) -> None:
    body = {"prompt": "x", "max_tokens": 4, "stream": True, "ignore_eos": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True}}  # fmt: skip
    _, _, raw = await _post(sim_server, "/v1/completions", body)
    frames = [_compact(f) for f in _frames(raw)]
    seen = [f["usage"]["completion_tokens"] for f in frames[:-1]]
    assert seen == sorted(seen) and seen[-1] == 4 == frames[-1]["usage"]["completion_tokens"]


async def test_non_stream_shapes(sim_server: SimServer) -> None:
    _, headers, raw = await _post(sim_server, "/v1/completions", {"prompt": "x", "max_tokens": 2})
    assert headers["Content-Type"] == "application/json"
    r = _compact(raw)
    assert list(r) == ["id", "object", "created", "model", "choices", "service_tier",
                       "system_fingerprint", "usage", "kv_transfer_params"]  # fmt: skip
    assert list(r["choices"][0]) == ["index", "text", "logprobs", "finish_reason", "stop_reason",
                                     "prompt_logprobs"]  # fmt: skip
    assert list(r["usage"]) == [*USAGE_KEYS, "prompt_tokens_details"]
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    _, _, raw = await _post(sim_server, "/v1/chat/completions", body)
    c = _compact(raw)
    assert c["object"] == "chat.completion" and c["id"].startswith("chatcmpl-")
    assert list(c["choices"][0]["message"]) == ["role", "content", "refusal", "annotations",
                                                "audio", "function_call", "tool_calls",
                                                "reasoning_content"]  # fmt: skip
    assert list(c)[-2:] == ["prompt_logprobs", "kv_transfer_params"]


async def test_request_id_header_is_passed_through(sim_server: SimServer) -> None:
    status, headers, raw = await _post(sim_server, "/v1/completions",
                                       {"prompt": "x", "max_tokens": 1},
                                       headers={"X-Request-Id": "req-42"})  # fmt: skip
    assert status == 200 and orjson.loads(raw)["id"] == "cmpl-req-42"
    assert headers["X-Request-Id"] == "req-42"


async def test_simple_endpoints(sim_server: SimServer) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(sim_server.url + "/health") as r:
            assert r.status == 200 and await r.read() == b""
        async with s.get(sim_server.url + "/version") as r:
            assert orjson.loads(await r.read()) == {"version": VLLM_VERSION}
        async with s.get(sim_server.url + "/v1/models") as r:
            models = orjson.loads(await r.read())
        async with s.get(sim_server.url + "/nope") as r:
            assert r.status == 404 and orjson.loads(await r.read()) == {"detail": "Not Found"}
    assert models["object"] == "list"
    card = models["data"][0]
    assert list(card) == ["id", "object", "created", "owned_by", "root", "parent",
                          "max_model_len", "permission"]  # fmt: skip
    assert card["owned_by"] == "vllm" and card["max_model_len"] == 8192
    assert card["permission"][0]["object"] == "model_permission"


async def test_tokenize(sim_server: SimServer) -> None:
    _, _, raw = await _post(sim_server, "/tokenize", {"prompt": "Hello world"})
    r = orjson.loads(raw)
    assert r == {"count": 3, "max_model_len": 8192, "tokens": tokenizer.encode("Hello world",
                 add_bos=True), "token_strs": None}  # fmt: skip
    msgs = [{"role": "user", "content": "hi"}]
    _, _, raw = await _post(sim_server, "/tokenize", {"messages": msgs})
    assert orjson.loads(raw)["count"] == tokenizer.count_chat_tokens(msgs)


async def test_coalescing_keeps_counts_exact(sim_spec: EngineSpec) -> None:
    # A budget of one chunk per 1000 s: between the (immediate) first token and the (immediate)
    # finish nothing else is due, so 40 tokens travel in exactly two content chunks.
    async with SimServer(sim_spec, time_scale=0.02, max_chunks_per_s=1e-3) as srv:
        body = {"prompt": "x", "max_tokens": 40, "stream": True, "ignore_eos": True,
                "stream_options": {"include_usage": True}}  # fmt: skip
        _, _, raw = await _post(srv, "/v1/completions", body)
    frames = [orjson.loads(f) for f in _frames(raw)]
    content = [f for f in frames if f["choices"]]
    assert len(content) == 2
    text = "".join(f["choices"][0]["text"] for f in content)
    assert tokenizer.count_tokens(text) == 40 == frames[-1]["usage"]["completion_tokens"]


async def _ttft_count(srv: SimServer) -> float:
    """``vllm:time_to_first_token_seconds_count``: the server observes a TTFT when the engine
    step that produced a request's first token ends (in wall time), before anything is sent."""
    async with aiohttp.ClientSession() as s, s.get(srv.url + "/metrics") as r:
        text = await r.text()
    for fam in text_string_to_metric_families(text):
        if fam.name == "vllm:time_to_first_token_seconds":
            return next(x.value for x in fam.samples if x.name.endswith("_count"))
    raise AssertionError("no TTFT histogram")


async def test_chat_role_frame_arrives_with_the_first_token() -> None:
    """The role frame is not sent when the stream opens but with the first token, after prefill:
    the headers arrive while the prompt is still being prefilled (no TTFT observed yet), and the
    first body read already holds the role frame *and* the first content frame, by which time
    the server has observed the TTFT (the first-token step has ended)."""
    spec = EngineSpec(model="llama-3-8b", gpu="H100", seed=1)
    # ~2K prompt tokens: ~60 ms of prefill on an H100, 0.3 s of wall time at time scale 5.
    words = " ".join(f"w{i % 97}" for i in range(1000))
    body = {"messages": [{"role": "user", "content": words}], "max_tokens": 3, "stream": True,
            "ignore_eos": True}  # fmt: skip
    async with (
        SimServer(spec, time_scale=5.0) as srv,
        aiohttp.ClientSession() as s,
        s.post(srv.url + "/v1/chat/completions", json=body) as r,
    ):
        assert r.status == 200  # headers are out: the stream is open
        assert srv.engine.num_unfinished == 1  # the request is in the engine
        assert await _ttft_count(srv) == 0  # ... and no first token yet
        first = await r.content.readany()
        assert await _ttft_count(srv) == 1  # the role frame came after the first token
        frames = [orjson.loads(f[6:]) for f in first.split(b"\n\n") if f]
        assert len(frames) >= 2, first  # role and first content frame in one write
        assert frames[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        assert frames[1]["choices"][0]["delta"]["content"]
        rest = await r.read()
    assert (first + rest).endswith(b"data: [DONE]\n\n")

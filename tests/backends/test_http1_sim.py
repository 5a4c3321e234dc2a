"""The engine HTTP/1.1 client against the simulated vLLM server (``vcp sim`` in-process)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest
import uvloop

from vllm_control_plane.backends.http1 import ConnectionPool
from vllm_control_plane.sim.launcher import SimServer
from vllm_control_plane.sim.types import EngineSpec

SPEC = EngineSpec(model="llama-3-8b", gpu="H100")
CHAT = {
    "model": "llama-3-8b",
    "messages": [{"role": "user", "content": "Tell me about the sea."}],
    "max_tokens": 12,
    "ignore_eos": True,
}
STREAM = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
LONG = {"model": "llama-3-8b", "prompt": "go on", "max_tokens": 4000, "ignore_eos": True}


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    async with SimServer(SPEC, time_scale=0.02) as srv:
        yield srv


def _content(frames: list[bytes]) -> tuple[str, dict, bytes]:
    """(text of every delta, the usage, the last frame) of a chat stream."""
    text, usage = "", {}
    for frame in frames[:-1]:
        obj = orjson.loads(frame.removeprefix(b"data: "))
        for choice in obj["choices"]:
            text += choice["delta"].get("content") or ""
        usage = obj.get("usage") or usage
    return text, usage, frames[-1]


async def _aiohttp_frames(url: str, body: dict, rid: str) -> list[bytes]:
    async with (
        aiohttp.ClientSession() as s,
        s.post(url, json=body, headers={"X-Request-Id": rid}) as r,
    ):
        return [line.rstrip(b"\n") async for line in r.content if line != b"\n"]


async def test_stream_matches_aiohttp(sim: SimServer) -> None:
    url = sim.url + "/v1/chat/completions"
    ref = await _aiohttp_frames(url, STREAM, "same-id")
    pool = ConnectionPool()
    resp = await pool.request(
        "POST", url, orjson.dumps(STREAM), {"X-Request-Id": "same-id"}, first_timeout=30
    )
    assert resp.status == 200 and resp.headers["content-type"].startswith("text/event-stream")
    frames = [f async for f in resp.sse_frames()]
    await pool.close()
    # the sim coalesces tokens by wall time, so the cut into frames may differ; the content not
    assert _content(frames) == _content(ref)
    assert _content(frames)[1]["completion_tokens"] == 12 and frames[-1] == b"data: [DONE]"
    assert all(f.startswith(b'data: {"id":"chatcmpl-same-id"') for f in frames[:-1])


async def test_json_answer_and_keep_alive(sim: SimServer) -> None:
    pool = ConnectionPool()
    for i in range(3):
        resp = await pool.request(
            "POST", sim.url + "/v1/chat/completions", orjson.dumps(CHAT), {"X-Request-Id": f"r{i}"}
        )
        answer = orjson.loads(await resp.read())
        assert answer["id"] == f"chatcmpl-r{i}" and answer["usage"]["completion_tokens"] == 12
    assert await pool.get(sim.url + "/health", timeout=5) == (200, b"")
    status, metrics = await pool.get(sim.url + "/metrics", timeout=5)
    assert status == 200 and b"vllm:num_requests_running" in metrics
    assert pool.connections_opened == 1
    await pool.close()


async def test_error_status_is_an_answer_not_an_exception(sim: SimServer) -> None:
    pool = ConnectionPool()
    resp = await pool.request("POST", sim.url + "/v1/completions", b'{"model": "nope"}')
    assert resp.status == 404 and "error" in orjson.loads(await resp.read())
    await pool.close()


async def test_abort_mid_stream_aborts_the_engine_request(sim: SimServer, wait_until) -> None:
    pool = ConnectionPool()
    body = orjson.dumps({**LONG, "stream": True})
    resp = await pool.request("POST", sim.url + "/v1/completions", body)
    frames = resp.sse_frames()
    assert (await frames.__anext__()).startswith(b"data: {")
    assert sim.engine.stats().num_requests_running == 1
    resp.close()
    await wait_until(lambda: sim.engine.stats().num_requests_running == 0, what="engine abort")
    assert sim.engine.stats().request_success.get("abort") == 1
    assert pool.num_open == 0
    await pool.close()


def test_under_uvloop() -> None:
    """The gateway runs on uvloop: stream, keep-alive and abort there too."""

    async def scenario() -> None:
        async with SimServer(SPEC, time_scale=0.02) as srv:
            pool = ConnectionPool()
            url = srv.url + "/v1/chat/completions"
            for _ in range(2):
                resp = await pool.request("POST", url, orjson.dumps(STREAM))
                frames = [f async for f in resp.sse_frames()]
                assert _content(frames)[1]["completion_tokens"] == 12
            assert pool.connections_opened == 1
            body = orjson.dumps({**LONG, "stream": True})
            resp = await pool.request("POST", srv.url + "/v1/completions", body)
            await resp.sse_frames().__anext__()
            assert srv.engine.has_unfinished()
            resp.close()
            while srv.engine.has_unfinished():
                await asyncio.sleep(0.005)
            await pool.close()
            assert pool.num_open == 0

    uvloop.run(asyncio.wait_for(scenario(), 30))

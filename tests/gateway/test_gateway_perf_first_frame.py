"""The streaming first-frame path: frames pass through the moment they arrive, a retried
attempt's role frame is not repeated, a request that finds room is dispatched at submission, and
finished requests leave little for the garbage collector."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest
from aiohttp import web
from tests.gateway.conftest import CHAT, StartGateway, eventually

from vllm_control_plane.backends.openai_http import _parse_frame, _StreamState
from vllm_control_plane.gateway import cli as gateway_cli
from vllm_control_plane.types import RequestMetadata, RequestStatus

_HEAD = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1,
         "model": "llama-3-8b"}  # fmt: skip


def _frame(delta: dict | None, finish: str | None = None, **extra: object) -> bytes:
    choices = [] if delta is None else [
        {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    ]  # fmt: skip
    return b"data: " + orjson.dumps({**_HEAD, "choices": choices, **extra}) + b"\n\n"


ROLE = _frame({"role": "assistant", "content": ""})
USAGE = _frame(None, usage={"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6})


class FakeEngine:
    """An OpenAI-compatible engine that sends the role frame at once and the rest only when the
    test says so; ``fail_first`` requests lose their connection right after the role frame."""

    def __init__(self, fail_first: int = 0) -> None:
        self.release = asyncio.Event()
        self.fail_first = fail_first
        self.requests = 0
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        self.requests += 1
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(ROLE)
        if self.requests <= self.fail_first:
            assert request.transport is not None
            request.transport.abort()  # the engine dies before its first token
            return resp
        await self.release.wait()
        for frame in (_frame({"content": "Hi"}), _frame({"content": ""}, "stop"), USAGE):
            await resp.write(frame)
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(text="")

    async def __aenter__(self) -> FakeEngine:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._health)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release.set()
        assert self._runner is not None
        await self._runner.cleanup()


async def _gateway_over(start_gateway: StartGateway, engine: FakeEngine, copies: int = 1):
    instances = [{"instance_id": f"fake-{i}", "url": engine.url, "model_name": "llama-3-8b"}
                 for i in range(copies)]  # fmt: skip
    return await start_gateway(simulated=[], instances=instances)


async def _frames(resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    async for line in resp.content:
        if line.startswith(b"data: "):
            yield line.rstrip(b"\n")


async def test_role_frame_reaches_the_client_while_the_engine_holds_the_first_token(
    start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    async with FakeEngine() as engine:
        gw = await _gateway_over(start_gateway, engine)
        body = {"model": "llama-3-8b", "messages": CHAT, "stream": True}
        async with http.post(gw.url + "/v1/chat/completions", json=body) as resp:
            assert resp.status == 200 and resp.headers["X-Instance-Id"] == "fake-0"
            frames = _frames(resp)
            first = await asyncio.wait_for(anext(frames), 10)
            assert first + b"\n\n" == ROLE  # unchanged, and before any token exists
            assert not engine.release.is_set()
            engine.release.set()
            rest = [f async for f in frames]
    assert rest[-1] == b"data: [DONE]" and b'"content":"Hi"' in rest[0]


async def test_retried_attempt_does_not_repeat_the_role_frame(
    start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    async with FakeEngine(fail_first=1) as engine:
        engine.release.set()
        gw = await _gateway_over(start_gateway, engine, copies=2)
        body = {"model": "llama-3-8b", "messages": CHAT, "stream": True}
        headers = {"X-Request-Id": "retried-1"}
        async with http.post(gw.url + "/v1/chat/completions", json=body, headers=headers) as r:
            assert r.status == 200
            frames = [f async for f in _frames(r)]
    assert engine.requests == 2
    assert sum(b'"role":"assistant"' in f for f in frames) == 1
    assert b'"content":"Hi"' in frames[1] and frames[-1] == b"data: [DONE]"
    rec = gw.gateway.cp.core.record("retried-1")
    assert rec.retries == 1 and rec.status is RequestStatus.COMPLETED
    assert rec.completion_tokens == 1  # the role frame is not a token


def test_role_and_tool_call_frames_go_up_only_generated_output_counts() -> None:
    state = _StreamState()
    role = _parse_frame(ROLE.rstrip(b"\n"), state)
    tool = _parse_frame(_frame({"tool_calls": [{"index": 0, "id": "t1"}]}).rstrip(b"\n"), state)
    text = _parse_frame(_frame({"content": "x"}).rstrip(b"\n"), state)
    finish = _parse_frame(_frame({"content": ""}, "stop").rstrip(b"\n"), state)
    assert role is not None and not role.has_output and role.raw == ROLE
    assert tool is not None and tool.has_output and tool.num_tokens == 1
    assert text is not None and text.has_output and text.text == "x"
    assert finish is not None and finish.has_output and finish.num_tokens == 0
    assert state.completion_tokens == 2 and state.finish_reason == "stop"


async def test_a_request_with_room_is_dispatched_at_submission(start_gateway) -> None:
    gw = await start_gateway()
    cp = gw.gateway.cp
    await cp.submit_request(RequestMetadata(request_id="at-once", prompt="Hi", max_tokens=2))
    assert cp.core.status("at-once") is not RequestStatus.QUEUED  # no dispatch-loop turn
    assert (await cp.get_result("at-once", timeout=10)).ok


async def test_finished_requests_keep_neither_task_nor_frames(
    start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    gw = await start_gateway()
    body = {"model": "llama-3-8b", "messages": CHAT, "max_tokens": 4, "stream": True}
    async with http.post(gw.url + "/v1/chat/completions", json=body,
                         headers={"X-Request-Id": "light-1"}) as resp:  # fmt: skip
        assert resp.status == 200
        await resp.read()
    handle = gw.gateway.cp.handle("light-1")
    # (the gateway's handler finishes just after the client's last byte)
    await eventually(lambda: not handle.chunks and handle.task is None, what="released")
    assert handle.result.result().text  # the result keeps the text


@pytest.fixture
def restore_gc():  # type: ignore[no-untyped-def]
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_vcp_serve_keeps_full_collections_rare(restore_gc) -> None:  # type: ignore[no-untyped-def]
    gateway_cli._tune_gc()
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold()[2] == gateway_cli.FULL_GC_EVERY

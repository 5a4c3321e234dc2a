"""The HTTP backend's failure events, one per timeout and error kind (the table in
docs/reliability.md): what ``kind`` each carries and whether it may be retried."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator, Iterator

import pytest
from tests.reliability.faultkit import instance, sim

from vllm_control_plane.backends.base import BackendEvent, Failed, Finished, Timeouts
from vllm_control_plane.backends.openai_http import OpenAIHTTPBackend
from vllm_control_plane.sim.faults import FaultConfig
from vllm_control_plane.sim.launcher import _free_port
from vllm_control_plane.types import RequestMetadata


@pytest.fixture
def backlog_full_port() -> Iterator[int]:
    """A port whose listen backlog is full: a new connection is never established (the kernel
    drops the SYN), which is what a connect timeout looks like."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    for _ in range(4):
        c = socket.socket()
        c.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            c.connect(("127.0.0.1", port))
        fillers.append(c)
    yield port
    for c in fillers:
        c.close()
    server.close()


@pytest.fixture
async def backend() -> AsyncIterator[OpenAIHTTPBackend]:
    b = OpenAIHTTPBackend(Timeouts(connect=0.3, first_token=0.6, idle=0.6))
    await b.start()
    yield b
    await b.close()


async def _events(backend: OpenAIHTTPBackend, port: int, **kw: object) -> list[BackendEvent]:
    request = RequestMetadata(request_id="t", max_tokens=5, ignore_eos=True, **kw)  # type: ignore[arg-type]
    return [e async for e in backend.generate(instance("x", port), request)]


async def test_connect_timeout_is_a_retryable_connect_failure(backend, backlog_full_port) -> None:
    (event,) = await _events(backend, backlog_full_port)
    assert isinstance(event, Failed) and event.kind == "connect" and event.retryable
    assert event.error == "connect timeout (0.3 s)"


async def test_connection_refused_is_a_retryable_connect_failure(backend) -> None:
    (event,) = await _events(backend, _free_port("127.0.0.1"))
    assert isinstance(event, Failed) and event.kind == "connect" and event.retryable
    assert event.error.startswith("cannot connect to engine")


async def test_no_answer_at_all_is_a_first_token_timeout(backend, no_task_leaks) -> None:
    async with sim(1, FaultConfig(hang=True)) as srv:
        (event,) = await _events(backend, srv.port)
        assert isinstance(event, Failed) and event.kind == "timeout" and event.retryable
        assert event.error == "first token timeout (0.6 s)"


@pytest.mark.parametrize(("status", "retryable"), [(500, True), (503, True), (429, True),
                                                   (400, False), (404, False)])  # fmt: skip
async def test_http_errors_carry_their_status(backend, status: int, retryable: bool) -> None:
    async with sim(1, FaultConfig(error_rate=1.0, error_status=status)) as srv:
        (event,) = await _events(backend, srv.port)
    assert isinstance(event, Failed) and event.kind == "http_status"
    assert event.status == status and event.retryable is retryable


async def test_engine_error_frame_mid_stream_is_a_stream_error(backend) -> None:
    async with sim(1, FaultConfig(midstream_error_after_tokens=2)) as srv:
        events = await _events(backend, srv.port)
    failed = events[-1]
    assert isinstance(failed, Failed) and failed.kind == "stream_error" and not failed.retryable
    assert "engine error mid-stream" in failed.error


async def test_malformed_frame_is_a_protocol_failure(backend) -> None:
    async with sim(1, FaultConfig(malformed_sse_after_tokens=0)) as srv:
        (event,) = await _events(backend, srv.port)
    assert isinstance(event, Failed) and event.kind == "protocol" and event.retryable
    assert event.error.startswith("malformed SSE frame from engine")


async def test_a_sound_stream_finishes(backend) -> None:
    async with sim(1) as srv:
        events = await _events(backend, srv.port)
    assert isinstance(events[-1], Finished) and events[-1].completion_tokens == 5

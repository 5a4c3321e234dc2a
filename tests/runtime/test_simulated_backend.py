"""``SimulatedBackend``: a ControlPlaneManager over in-process simulated engines.

The backend starts one simulated vLLM server per registered instance, built from the instance's
own description (model, GPU, TP, PP), on a loopback port of its choosing; the instance's
``host``/``port`` are ignored. Requests go over HTTP as with a real vLLM.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import pytest

from vllm_control_plane import (
    ControlPlaneManager,
    ExecutionInstance,
    MonitorConfig,
    RequestError,
    RequestMetadata,
    RequestStatus,
    SimulatedBackend,
)

FAST = 0.02  # 50x faster than real time
GPUS = {"h100": "H100", "a100": "A100-80G"}


def _instances() -> list[ExecutionInstance]:
    # host/port point nowhere: the backend maps instance ids to its own servers
    return [
        ExecutionInstance(
            instance_id=iid, host="engine.invalid", port=9, model_name="llama-3-8b", gpu_type=gpu
        )
        for iid, gpu in GPUS.items()
    ]


def _manager(backend: SimulatedBackend) -> ControlPlaneManager:
    cp = ControlPlaneManager(
        "fifo",
        "round_robin",
        backend=backend,
        monitor_config=MonitorConfig(health_interval=0.05, scrape_interval=0.05),
    )
    for inst in _instances():
        cp.register_instance(inst)
    return cp


def _other_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()]


@pytest.fixture
async def fleet() -> AsyncIterator[tuple[ControlPlaneManager, SimulatedBackend]]:
    backend = SimulatedBackend(time_scale=FAST, seed=0)
    cp = _manager(backend)
    await cp.start()
    try:
        yield cp, backend
    finally:
        await cp.stop()
    assert _other_tasks() == []


def _running_on_engines(backend: SimulatedBackend) -> int:
    return sum(backend.server(iid).engine.stats().num_requests_running for iid in GPUS)


async def test_requests_complete_with_text_usage_and_timings(fleet):
    cp, backend = fleet
    rids = [f"r{i}" for i in range(4)]
    for rid in rids:
        await cp.submit_request(
            RequestMetadata(
                request_id=rid,
                prompt="Tell me a story",
                max_tokens=10,
                ignore_eos=True,
                slo_deadline_ms=60_000,
            )
        )
    results = [await cp.get_result(rid, timeout=30) for rid in rids]

    for r in results:
        assert r.status is RequestStatus.COMPLETED and r.error is None
        assert r.completion_tokens == 10 and r.finish_reason == "length"
        assert len(r.text.split()) == 10  # the simulator emits one word per token
        assert r.prompt_tokens > 1
        assert r.usage == {"prompt_tokens": r.prompt_tokens, "completion_tokens": 10,
                           "total_tokens": r.prompt_tokens + 10}  # fmt: skip
        assert r.queue_time_ms is not None and r.queue_time_ms >= 0
        assert 0 < r.ttft_ms <= r.latency_ms and r.tpot_ms > 0
        assert r.slo_met is True and r.cost_usd > 0
    # round robin over the two instances; each one's engine is the instance it models
    by_instance = {iid: [r for r in results if r.instance_id == iid] for iid in GPUS}
    assert {iid: len(rs) for iid, rs in by_instance.items()} == {"h100": 2, "a100": 2}
    for iid, rs in by_instance.items():
        server = backend.server(iid)
        assert (server.spec.model, server.spec.gpu) == ("llama-3-8b", GPUS[iid])
        assert server.host == "127.0.0.1" and server.port != 9
        stats = server.engine.stats()
        assert stats.generation_tokens == sum(r.completion_tokens for r in rs)
        assert stats.prompt_tokens == sum(r.prompt_tokens for r in rs)
        assert stats.request_success.get("length") == len(rs)
    m = cp.get_metrics()
    assert m.completed_requests == 4 and m.failed_requests == 0
    assert m.completion_tokens == 40 and m.slo_compliance_rate == 1.0


async def test_stream_yields_the_generated_text(fleet):
    cp, _ = fleet
    request = RequestMetadata(request_id="s1", prompt="Hello", max_tokens=8, ignore_eos=True)
    pieces = [text async for text in cp.stream(request)]
    result = await cp.get_result("s1")
    assert result.status is RequestStatus.COMPLETED and result.completion_tokens == 8
    assert pieces and "".join(pieces) == result.text
    assert len(result.text.split()) == 8


async def test_cancelling_a_running_request_frees_the_engine(fleet, wait_until):
    cp, backend = fleet
    await cp.submit_request(RequestMetadata(request_id="long", max_tokens=5000, ignore_eos=True))
    async with contextlib.aclosing(cp.handle("long").events()) as events:
        async for _ in events:  # the first token: the engine is generating it
            break
    assert await cp.get_request_status("long") is RequestStatus.RUNNING
    iid = cp.core.record("long").instance_id
    assert _running_on_engines(backend) == 1
    assert backend.server(iid).engine.stats().num_requests_running == 1

    assert await cp.cancel_request("long") is True
    assert await cp.get_request_status("long") is RequestStatus.CANCELLED
    assert cp.get_instance_metrics(iid)["active_requests"] == 0
    # the stream was closed: the engine aborts the request and its running count drops to 0
    await wait_until(lambda: _running_on_engines(backend) == 0, what="engine abort")
    assert backend.server(iid).engine.stats().request_success.get("length", 0) == 0
    # ...and the control plane's scrape of /metrics sees it too
    await wait_until(
        lambda: cp.get_instance_metrics(iid)["num_requests_running"] == 0, what="scrape"
    )
    result = await cp.get_result("long")
    assert result.status is RequestStatus.CANCELLED and result.error == "cancelled"
    assert 0 < len(result.text.split()) < 5000  # the text streamed before the cancel
    with pytest.raises(RequestError, match="cancelled"):
        async for _ in cp.stream("long"):
            pass


async def test_stop_leaves_no_task_and_closes_the_servers():
    backend = SimulatedBackend(time_scale=FAST, seed=0)
    cp = _manager(backend)
    await cp.start()
    await cp.submit_request(RequestMetadata(request_id="done", max_tokens=4, ignore_eos=True))
    assert (await cp.get_result("done", timeout=30)).status is RequestStatus.COMPLETED
    await cp.submit_request(RequestMetadata(request_id="live", max_tokens=5000, ignore_eos=True))
    async with contextlib.aclosing(cp.handle("live").events()) as events:
        async for _ in events:
            break
    ports = [backend.server(iid).port for iid in GPUS]  # both started (a request each)

    await cp.stop()

    assert (await cp.get_result("live")).status is RequestStatus.CANCELLED
    assert _other_tasks() == []
    for port in ports:  # the simulated servers are closed
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            pass
    for iid in GPUS:
        with pytest.raises(KeyError):
            backend.server(iid)
    c = cp.core.counters()
    assert c.in_flight == 0 and c.submitted == c.completed + c.cancelled == 2

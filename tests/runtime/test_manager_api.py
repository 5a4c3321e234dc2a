"""ControlPlaneManager driving simulated vLLM servers over HTTP: the quick-start API, for real."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from vllm_control_plane import (
    ControlPlaneManager,
    ExecutionInstance,
    MonitorConfig,
    ParallelismType,
    RequestError,
    RequestMetadata,
    RequestPriority,
    RequestStatus,
)
from vllm_control_plane.core.core import DuplicateRequestId
from vllm_control_plane.sim.launcher import SimServer
from vllm_control_plane.sim.types import EngineSpec

FAST = 0.05


def _instance(srv: SimServer, iid: str, **kw: object) -> ExecutionInstance:
    return ExecutionInstance(
        instance_id=iid, host="127.0.0.1", port=srv.port, model_name="llama-3-8b",
        gpu_type="H100", **kw,
    )  # fmt: skip


@pytest.fixture
async def two_servers() -> AsyncIterator[tuple[SimServer, SimServer]]:
    spec = EngineSpec(model="llama-3-8b", gpu="H100", mean_output_tokens=16.0, seed=3)
    async with SimServer(spec, time_scale=FAST) as a, SimServer(spec, time_scale=FAST) as b:
        yield a, b


@pytest.fixture
async def cp(two_servers: tuple[SimServer, SimServer]) -> AsyncIterator[ControlPlaneManager]:
    a, b = two_servers
    manager = ControlPlaneManager(
        "fifo",
        "round_robin",
        monitor_config=MonitorConfig(health_interval=0.05, scrape_interval=0.05),
    )
    manager.register_instance(_instance(a, "a"))
    manager.register_instance(_instance(b, "b"))
    await manager.start()
    yield manager
    await manager.stop()
    leftover = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert not [t for t in leftover if (t.get_name() or "").startswith("vcp-")]


async def test_submit_returns_at_once_and_result_has_text_usage_timings(cp: ControlPlaneManager):
    rid = await cp.submit_request(
        RequestMetadata(request_id="r1", prompt="Hello, world", max_tokens=12, ignore_eos=True)
    )
    assert rid == "r1"
    assert await cp.get_request_status("r1") in {
        RequestStatus.QUEUED, RequestStatus.SCHEDULED, RequestStatus.RUNNING,
    }  # fmt: skip
    result = await cp.get_result("r1", timeout=10)
    assert result.status is RequestStatus.COMPLETED
    assert result.completion_tokens == 12 and result.finish_reason == "length"
    assert len(result.text.split()) == 12
    assert result.prompt_tokens > 1 and result.usage["total_tokens"] == result.prompt_tokens + 12
    assert 0 < result.ttft_ms <= result.latency_ms and result.tpot_ms > 0
    assert result.instance_id in {"a", "b"} and result.cost_usd > 0
    # status answers for finished requests too
    assert await cp.get_request_status("r1") is RequestStatus.COMPLETED


async def test_stream_yields_tokens_in_order(cp: ControlPlaneManager):
    pieces = [
        t
        async for t in cp.stream(
            RequestMetadata(request_id="s1", prompt="Tell me", max_tokens=8, ignore_eos=True)
        )
    ]
    result = await cp.get_result("s1")
    assert "".join(pieces) == result.text and result.completion_tokens == 8


async def test_chat_messages_are_supported(cp: ControlPlaneManager):
    req = RequestMetadata(
        request_id="c1", messages=[{"role": "user", "content": "Hi there"}], max_tokens=5,
        ignore_eos=True,
    )  # fmt: skip
    await cp.submit_request(req)
    result = await cp.get_result("c1", timeout=10)
    assert result.ok and result.completion_tokens == 5


async def test_metrics_and_status_are_computed_from_what_happened(cp: ControlPlaneManager):
    for i in range(6):
        await cp.submit_request(
            RequestMetadata(
                request_id=f"m{i}", max_tokens=10, ignore_eos=True, slo_deadline_ms=60_000,
                priority=RequestPriority.HIGH if i % 2 else RequestPriority.NORMAL,
            )
        )  # fmt: skip
    results = [await cp.get_result(f"m{i}", timeout=10) for i in range(6)]
    m = cp.get_metrics()
    assert m.completed_requests == 6 and m.failed_requests == 0
    assert m.completion_tokens == 60
    lat = sorted(r.latency_ms for r in results)
    assert lat[0] <= m.p50_latency_ms <= lat[-1] and m.p99_latency_ms <= lat[-1] + 1e-6
    assert m.slo_compliance_rate == 1.0 and m.slo_violations == 0
    assert set(m.slo_compliance_by_priority) == {"high", "normal"}
    assert m.total_cost > 0 and m.cost_per_token == pytest.approx(m.total_cost / 60)
    status = cp.get_status()
    assert status["running_requests"] == 0 and status["pending_requests"] == 0
    assert status["available_instances"] == 2
    assert status["scheduling_policy"] == "fifo" and status["routing_strategy"] == "round_robin"
    used = {r.instance_id for r in results}
    assert used == {"a", "b"}  # round robin spreads


async def test_cancel_running_request_frees_the_engine(
    cp: ControlPlaneManager, two_servers: tuple[SimServer, SimServer], wait_until
):
    await cp.submit_request(RequestMetadata(request_id="long", max_tokens=5000, ignore_eos=True))
    await wait_until(lambda: cp.core.status("long") is RequestStatus.RUNNING, what="running")
    engines = [s.engine for s in two_servers]
    await wait_until(lambda: sum(e.stats().num_requests_running for e in engines) == 1)
    assert await cp.cancel_request("long") is True
    assert await cp.get_request_status("long") is RequestStatus.CANCELLED
    await wait_until(
        lambda: sum(e.stats().num_requests_running for e in engines) == 0, what="engine abort"
    )
    assert await cp.cancel_request("long") is False  # already ended
    result = await cp.get_result("long")
    assert result.status is RequestStatus.CANCELLED


async def test_cancel_queued_request(two_servers: tuple[SimServer, SimServer]):
    a, _ = two_servers
    cp = ControlPlaneManager("fifo", "round_robin", enable_monitoring=False)
    cp.register_instance(_instance(a, "a", max_concurrent_requests=1))
    await cp.start()
    try:
        await cp.submit_request(
            RequestMetadata(request_id="first", max_tokens=2000, ignore_eos=True)
        )
        await cp.submit_request(RequestMetadata(request_id="second", max_tokens=5))
        assert await cp.get_request_status("second") is RequestStatus.QUEUED
        assert await cp.cancel_request("second")
        assert (await cp.get_result("second")).status is RequestStatus.CANCELLED
    finally:
        await cp.stop()
    # stop() cancelled the running one too: every request ended in one terminal state
    assert (await cp.get_result("first")).status is RequestStatus.CANCELLED
    c = cp.core.counters()
    assert (
        c.submitted == c.completed + c.failed + c.cancelled + c.rejected + c.timeout + c.in_flight
    )
    assert c.in_flight == 0


async def test_bad_input_is_a_clear_error_or_rejection(cp: ControlPlaneManager):
    with pytest.raises(ValueError, match="max_tokens"):
        RequestMetadata(request_id="neg", max_tokens=-1)
    await cp.submit_request(RequestMetadata(request_id="dup", max_tokens=2000, ignore_eos=True))
    with pytest.raises(ValueError, match="dup"):
        await cp.submit_request(RequestMetadata(request_id="dup", max_tokens=5))
    await cp.cancel_request("dup")

    await cp.submit_request(RequestMetadata(request_id="nomodel", model_name="gpt-17"))
    res = await cp.get_result("nomodel")
    assert res.status is RequestStatus.REJECTED and "gpt-17" in res.error

    await cp.submit_request(RequestMetadata(request_id="hint", parallelism_hint=ParallelismType.TP))
    res = await cp.get_result("hint")
    assert res.status is RequestStatus.REJECTED and "tp" in res.error.lower()

    with pytest.raises(KeyError):
        cp.get_instance_metrics("nope")
    with pytest.raises(KeyError):
        await cp.get_request_status("never-submitted")
    with pytest.raises(ValueError, match="fifo"):
        cp.update_policy("fastest")
    with pytest.raises(ValueError, match="round_robin"):
        cp.router.routing_strategy = "magic"
    with pytest.raises(ValueError):
        cp.register_instance(ExecutionInstance(instance_id="a", port=1))
    c = cp.core.counters()
    assert c.rejected == 2


async def test_a_completed_request_id_cannot_be_reused(cp: ControlPlaneManager):
    await cp.submit_request(RequestMetadata(request_id="once", max_tokens=4, ignore_eos=True))
    first = await cp.get_result("once", timeout=10)
    assert first.status is RequestStatus.COMPLETED
    before = cp.core.counters()
    with pytest.raises(DuplicateRequestId, match="'once' already completed") as refused:
        await cp.submit_request(RequestMetadata(request_id="once", max_tokens=9))
    assert isinstance(refused.value, ValueError) and not refused.value.live
    # nothing was replaced or counted: the first result is still the id's answer
    again = await cp.get_result("once")
    assert again.completion_tokens == 4 and again.text == first.text
    assert cp.core.counters() == before
    assert await cp.get_request_status("once") is RequestStatus.COMPLETED


async def test_an_id_whose_request_did_not_complete_may_be_retried(cp: ControlPlaneManager):
    await cp.submit_request(RequestMetadata(request_id="again", model_name="gpt-17"))
    assert (await cp.get_result("again")).status is RequestStatus.REJECTED
    await cp.submit_request(RequestMetadata(request_id="again", max_tokens=3, ignore_eos=True))
    retried = await cp.get_result("again", timeout=10)
    assert retried.status is RequestStatus.COMPLETED and retried.completion_tokens == 3
    assert await cp.get_request_status("again") is RequestStatus.COMPLETED
    c = cp.core.counters()
    assert (c.submitted, c.rejected, c.completed, c.in_flight) == (2, 1, 1, 0)


def test_unknown_parallelism_hint_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"'bogus'; valid: tp, pp, dp, ep, hybrid$"):
        RequestMetadata(request_id="p", parallelism_hint="bogus")  # type: ignore[arg-type]
    for spelled in ("tp", "TP", "tensor_parallel", ParallelismType.TP):
        hint = RequestMetadata(request_id="p", parallelism_hint=spelled).parallelism_hint  # type: ignore[arg-type]
        assert hint is ParallelismType.TENSOR_PARALLEL
    assert ParallelismType.parse(" Hybrid ") is ParallelismType.HYBRID


async def test_stream_of_rejected_request_raises(cp: ControlPlaneManager):
    with pytest.raises(RequestError, match="rejected"):
        async for _ in cp.stream(RequestMetadata(request_id="x", model_name="nope")):
            pass


async def test_live_switches_and_load_balancer(cp: ControlPlaneManager):
    cp.update_policy("adaptive")
    assert cp.get_status()["scheduling_policy"] == "adaptive"
    cp.router.routing_strategy = "locality"
    assert cp.router.routing_strategy == "locality"
    assert cp.get_status()["routing_strategy"] == "locality"
    picks = [
        cp.load_balancer.select_instance(cp.get_instances(), algorithm="weighted_round_robin")
        for _ in range(4)
    ]
    assert {p.instance_id for p in picks} == {"a", "b"}
    await cp.submit_request(RequestMetadata(request_id="after", max_tokens=4, ignore_eos=True))
    assert (await cp.get_result("after", timeout=10)).ok


async def test_instance_metrics_and_unregister_drains(cp: ControlPlaneManager, wait_until):
    m = cp.get_instance_metrics("a")
    assert {"active_requests", "avg_latency_ms", "is_healthy", "current_load"} <= set(m)
    for i in range(4):
        await cp.submit_request(RequestMetadata(request_id=f"d{i}", max_tokens=40, ignore_eos=True))
    await wait_until(lambda: cp.get_instance_metrics("a")["active_requests"] > 0)
    cp.unregister_instance("a")
    results = [await cp.get_result(f"d{i}", timeout=10) for i in range(4)]
    assert all(r.ok for r in results)  # running requests finished on the drained instance
    await wait_until(lambda: [i.instance_id for i in cp.get_instances()] == ["b"])
    await cp.submit_request(RequestMetadata(request_id="post", max_tokens=3, ignore_eos=True))
    assert (await cp.get_result("post", timeout=10)).instance_id == "b"


async def test_unhealthy_instance_leaves_rotation_and_returns(
    cp: ControlPlaneManager, two_servers: tuple[SimServer, SimServer], wait_until
):
    a, _ = two_servers
    a.set_faults(unhealthy=True)
    await wait_until(lambda: not cp.get_instance_metrics("a")["is_healthy"], what="ejected")
    for i in range(4):
        await cp.submit_request(RequestMetadata(request_id=f"h{i}", max_tokens=3))
    assert {(await cp.get_result(f"h{i}", timeout=10)).instance_id for i in range(4)} == {"b"}
    a.set_faults(unhealthy=False)
    await wait_until(lambda: cp.get_instance_metrics("a")["is_healthy"], what="readmitted")
    assert cp.get_status()["available_instances"] == 2


async def test_failure_before_first_token_is_retried_elsewhere(
    cp: ControlPlaneManager, two_servers: tuple[SimServer, SimServer]
):
    a, _ = two_servers
    a.set_faults(error_rate=1.0, error_status=500)
    results = []
    for i in range(4):
        await cp.submit_request(RequestMetadata(request_id=f"f{i}", max_tokens=3))
        results.append(await cp.get_result(f"f{i}", timeout=10))
    assert all(r.ok and r.instance_id == "b" for r in results)
    assert sum(r.retries for r in results) >= 1
    assert cp.get_metrics().retries >= 1

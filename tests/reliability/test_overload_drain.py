"""Overload, deadlines, retry budget, drain, shutdown and cancellation over simulated servers.

Each test asserts every request's terminal state and reason, the accounting identity, and that
nothing is left running on the engines.
"""

from __future__ import annotations

import asyncio

import pytest
from tests.reliability.faultkit import (
    assert_identity,
    assert_quiet,
    instance,
    req,
    results,
    sim,
    submit_all,
    wait_until,
)

from vllm_control_plane.core.limits import CoreLimits
from vllm_control_plane.runtime.circuit import CircuitConfig
from vllm_control_plane.runtime.retry_budget import RetryBudgetConfig
from vllm_control_plane.sim.faults import FaultConfig
from vllm_control_plane.types import RequestPriority, RequestStatus

S = RequestStatus
P = RequestPriority
LONG = 7000  # tokens: about a second of wall time at the suite's time scale


async def _one(servers, make_cp, *, max_concurrent: int = 1, faults=None, **kw):
    (a,) = await servers(sim(1, faults))
    cp, backend = make_cp(**kw)
    cp.register_instance(instance("a", a.port, max_concurrent_requests=max_concurrent))
    await cp.start()
    return a, cp, backend


async def test_full_queue_sheds_lowest_priority_first_and_finishes_its_waiters(
    servers, make_cp
) -> None:
    limits = CoreLimits(max_queued=3, max_queued_per_priority={P.BACKGROUND: 1})
    a, cp, backend = await _one(servers, make_cp, limits=limits)
    await cp.submit_request(req("busy", max_tokens=300))  # holds the only slot
    await wait_until(lambda: cp.core.status("busy") is S.RUNNING)
    await submit_all(cp, [req("low", priority=P.LOW), req("bg", priority=P.BACKGROUND),
                          req("n1", priority=P.NORMAL)])  # fmt: skip
    await cp.submit_request(req("bg2", priority=P.BACKGROUND))  # over its priority's cap
    await cp.submit_request(req("hi", priority=P.HIGH))  # full: the newest lowest is shed
    await cp.submit_request(req("bg3", priority=P.BACKGROUND))  # full, nothing lower: refused
    got = await results(cp, ["busy", "low", "bg", "n1", "bg2", "hi", "bg3"])
    assert (
        got["bg2"].status is S.REJECTED and "queue full for priority background" in got["bg2"].error
    )
    assert got["bg"].status is S.REJECTED and got["bg"].error.startswith("shed: queue full")
    assert got["bg3"].status is S.REJECTED and "queue full" in got["bg3"].error
    assert all(got[r].status is S.COMPLETED for r in ("busy", "low", "n1", "hi"))
    assert cp.core.counters().shed == 1
    assert_identity(cp)
    await assert_quiet(backend, [a])


async def test_engine_saturation_holds_dispatch_in_the_control_plane(servers, make_cp) -> None:
    (a,) = await servers(sim(1, max_num_seqs=1))
    cp, backend = make_cp(limits=CoreLimits(saturation_waiting=0))
    cp.register_instance(instance("a", a.port, max_concurrent_requests=50))
    await cp.start()
    await submit_all(cp, [req("long", max_tokens=LONG), req("w1", max_tokens=LONG)])
    # the engine runs one and queues the other; once a scrape shows that, dispatch stops
    await wait_until(lambda: cp.core.instance("a").num_requests_waiting >= 1, what="scrape")
    ids = await submit_all(cp, [req(f"q{i}") for i in range(5)])
    await asyncio.sleep(0.1)  # two scrape rounds: still held back
    assert all(cp.core.status(r) is S.QUEUED for r in ids)
    assert a.engine.stats().num_requests_waiting == 1
    await cp.cancel_request("long")  # the engine frees up: the held requests go
    await cp.cancel_request("w1")
    got = await results(cp, ids)
    assert all(r.ok for r in got.values())
    assert_identity(cp)
    await assert_quiet(backend, [a])


async def test_hard_deadline_times_out_running_request_and_aborts_it(servers, make_cp) -> None:
    # slowed engine: the first tokens come well inside the deadline, the end far beyond it, so
    # the deadline always lands mid-stream however loaded the machine is
    a, cp, backend = await _one(servers, make_cp, max_concurrent=1, faults=FaultConfig(slowdown=4))
    await cp.submit_request(req("long", max_tokens=5000, slo_deadline_ms=1200), hard_deadline=True)
    await cp.submit_request(req("queued", slo_deadline_ms=200), hard_deadline=True)
    await cp.submit_request(req("soft", slo_deadline_ms=100))  # not hard: completes late
    got = await results(cp, ["long", "queued", "soft"])
    assert got["long"].status is S.TIMEOUT
    assert got["long"].error == "hard deadline passed while running" and got["long"].text
    assert got["queued"].status is S.TIMEOUT
    assert got["queued"].error == "hard deadline passed while queued"
    assert got["soft"].status is S.COMPLETED and got["soft"].slo_met is False
    assert backend.of("long")[0].end == "closed"  # our side closed the stream: engine abort
    assert_identity(cp)
    await assert_quiet(backend, [a])


async def test_retry_budget_stops_a_retry_storm_on_a_sick_fleet(servers, make_cp) -> None:
    sick = FaultConfig(error_rate=1.0, error_status=500)
    a, b, c = await servers(sim(1, sick), sim(2, sick), sim(3, sick))
    cp, backend = make_cp(
        budget=RetryBudgetConfig(ratio=0.2, floor=2, window_s=60),
        circuit=CircuitConfig(failure_threshold=0),  # isolate the budget from the breakers
    )
    for iid, s in zip("abc", (a, b, c), strict=True):
        cp.register_instance(instance(iid, s.port))
    await cp.start()
    ids = await submit_all(cp, [req(f"r{i}") for i in range(20)])
    got = await results(cp, ids)
    assert all(r.status is S.FAILED for r in got.values())
    retries = sum(r.retries for r in got.values())
    assert retries <= 0.2 * 20 + 2  # without the budget: 2 per request = 40
    assert len(backend.attempts) == 20 + retries
    refused = [r for r in got.values() if "retry budget exhausted" in r.error]
    assert refused and cp.retry_budget.refused == len(refused)
    assert cp.get_status()["retry_budget_refusals"] == len(refused)
    assert_identity(cp)
    await assert_quiet(backend, [a, b, c])


async def test_unregister_lets_running_requests_finish_within_the_drain_bound(
    servers, make_cp
) -> None:
    a, b = await servers(sim(1), sim(2))
    cp, backend = make_cp(drain_timeout_s=5.0)
    cp.register_instance(instance("a", a.port))
    cp.register_instance(instance("b", b.port))
    await cp.start()
    ids = await submit_all(cp, [req(f"r{i}", max_tokens=60) for i in range(4)])
    await wait_until(lambda: all(cp.core.status(r) is S.RUNNING for r in ids))
    cp.unregister_instance("a")
    late = await submit_all(cp, [req(f"n{i}") for i in range(3)])
    got = await results(cp, ids + late)
    assert all(r.status is S.COMPLETED and r.retries == 0 for r in got.values())
    assert all(got[r].instance_id == "b" for r in late)  # a takes nothing new while draining
    await wait_until(lambda: [i.instance_id for i in cp.get_instances()] == ["b"])
    assert_identity(cp)
    await assert_quiet(backend, [a, b])


async def test_drain_bound_aborts_stragglers_streaming_fail_waiting_retry(servers, make_cp) -> None:
    (a,) = await servers(sim(1, max_num_seqs=1))
    (b,) = await servers(sim(2))
    cp, backend = make_cp(drain_timeout_s=0.2, strategy="least_request")
    cp.register_instance(instance("a", a.port, max_concurrent_requests=2))
    cp.register_instance(instance("b", b.port, max_concurrent_requests=1))
    await cp.start()
    ids = await submit_all(cp, [req(f"r{i}", max_tokens=3000) for i in range(3)])
    await wait_until(lambda: a.engine.stats().num_requests_waiting == 1, what="one waits on a")
    await wait_until(lambda: any(x.tokens for x in backend.on("a")), what="one streams on a")
    streaming = next(x.request_id for x in backend.on("a") if x.tokens > 0)
    waiting = next(x.request_id for x in backend.on("a") if x.tokens == 0)
    on_b = next(r for r in ids if r not in (streaming, waiting))
    cp.unregister_instance("a")
    await wait_until(lambda: cp.core.status(streaming).is_terminal, timeout=5)
    r = await cp.get_result(streaming)
    assert r.status is S.FAILED and "instance a drained" in r.error and r.text
    assert cp.core.status(waiting) is not S.FAILED  # no token yet: back in the queue for b
    await cp.cancel_request(on_b)  # free b so the retried request can run there
    done = await cp.get_result(waiting, timeout=10)
    assert done.status is S.COMPLETED and done.instance_id == "b" and done.retries == 1
    assert_identity(cp)
    await assert_quiet(backend, [a, b])


@pytest.mark.parametrize("grace", [0.0, 0.4])
async def test_stop_drains_within_the_bound_then_cancels(servers, make_cp, grace: float) -> None:
    a, cp, backend = await _one(servers, make_cp, max_concurrent=2)
    await submit_all(cp, [req("short", max_tokens=20), req("long", max_tokens=LONG),
                          req("queued", max_tokens=20)])  # fmt: skip
    await wait_until(lambda: cp.core.status("long") is S.RUNNING)
    await cp.stop(drain_timeout_s=grace)
    got = await results(cp, ["short", "long", "queued"])
    assert got["long"].status is S.CANCELLED and got["long"].error == "control plane stopped"
    if grace:  # the short ones finish within the bound (the queued one is still dispatched)
        assert got["short"].ok and got["queued"].ok
    else:
        assert got["queued"].status is S.CANCELLED
    assert_identity(cp)
    await assert_quiet(backend, [a])
    with pytest.raises(RuntimeError, match="stopping"):
        await cp.submit_request(req("after"))


async def test_cancel_propagates_to_the_engine_queued_and_running(servers, make_cp) -> None:
    a, cp, backend = await _one(servers, make_cp, max_concurrent=1)
    await submit_all(cp, [req("run", max_tokens=LONG), req("wait")])
    await wait_until(lambda: a.engine.stats().num_requests_running == 1)
    assert await cp.cancel_request("wait") and await cp.cancel_request("run")
    got = await results(cp, ["run", "wait"])
    assert got["run"].status is S.CANCELLED and got["wait"].status is S.CANCELLED
    assert backend.of("run")[0].end == "closed" and not backend.of("wait")
    assert_identity(cp)
    await assert_quiet(backend, [a])  # the engine aborted the running one


async def test_stop_after_the_core_forgot_finished_requests(servers, make_cp) -> None:
    (a,) = await servers(sim(1))
    cp, backend = make_cp(limits=CoreLimits(history_size=2), result_history=50)
    cp.register_instance(instance("a", a.port))
    await cp.start()
    ids = await submit_all(cp, [req(f"r{i}", max_tokens=2) for i in range(8)])
    await results(cp, ids)
    await cp.submit_request(req("live", max_tokens=LONG))
    await wait_until(lambda: cp.core.status("live") is S.RUNNING)
    await cp.stop()  # r0..r5 are gone from the core's history, their handles are not
    assert (await cp.get_result("live")).status is S.CANCELLED
    assert_identity(cp)
    await assert_quiet(backend, [a])

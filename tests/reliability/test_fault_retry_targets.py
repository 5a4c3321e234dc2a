"""Fault injection: a retry needs an instance in rotation that the request has not failed on.

The manager over simulated vLLM servers. An instance out of rotation (failed health checks,
draining) or already tried is no retry target; with none left — at the failure, or later while
the retry waits out its backoff — the request ends FAILED with the engine's error, instead of
waiting forever in the queue. Every request's outcome is asserted, the accounting identity holds
and nothing is left running (``assert_quiet``; the fixtures check tasks and the HTTP session).
"""

from __future__ import annotations

from tests.reliability.faultkit import (
    FAST_LIMITS,
    assert_identity,
    assert_quiet,
    instance,
    req,
    results,
    sim,
    submit_all,
    wait_until,
)

from vllm_control_plane.core.core import NO_RETRY_TARGET
from vllm_control_plane.core.limits import CoreLimits
from vllm_control_plane.sim.faults import FaultConfig
from vllm_control_plane.types import RequestStatus

S = RequestStatus
BURST = FaultConfig(error_rate=1.0, error_status=503)


async def _fleet(servers, make_cp, *faults: FaultConfig | None, **kw):
    sims = await servers(*(sim(k + 1, f) for k, f in enumerate(faults)))
    cp, backend = make_cp(**kw)
    for name, s in zip("abc", sims, strict=False):
        cp.register_instance(instance(name, s.port))
    await cp.start()
    return sims, cp, backend


def _failed_without_target(result, on: str) -> None:
    assert result.status is S.FAILED and result.instance_id == on, result
    assert f"failed on {on}:" in result.error and "503" in result.error, result.error
    assert NO_RETRY_TARGET in result.error, result.error


async def test_503_with_the_other_instance_unhealthy_fails_instead_of_waiting(
    servers, make_cp
) -> None:
    (a, b), cp, backend = await _fleet(servers, make_cp, BURST, FaultConfig(unhealthy=True))
    await wait_until(lambda: not cp.rotation.in_rotation("b"), what="b ejected")
    ids = await submit_all(cp, [req("r0"), req("r1")])  # two 503s: a's circuit stays closed
    got = await results(cp, ids)
    for rid in ids:
        _failed_without_target(got[rid], "a")
        assert got[rid].retries == 0 and [x.instance_id for x in backend.of(rid)] == ["a"]
    assert backend.on("b") == []
    # the fleet recovers: new requests complete, the failed ones stay failed
    a.set_faults(error_rate=0.0)
    b.set_faults(unhealthy=False)
    await wait_until(lambda: cp.rotation.in_rotation("b"), what="b readmitted")
    after = await submit_all(cp, [req(f"n{i}") for i in range(4)])
    done = await results(cp, after)
    assert all(r.status is S.COMPLETED and r.retries == 0 for r in done.values())
    assert {r.instance_id for r in done.values()} == {"a", "b"}
    assert [await cp.get_request_status(rid) for rid in ids] == [S.FAILED, S.FAILED]
    assert cp.get_status()["pending_requests"] == 0
    assert_identity(cp)
    await assert_quiet(backend, [a, b])


async def test_503_with_the_other_instance_draining_fails(servers, make_cp) -> None:
    (a, b), cp, backend = await _fleet(servers, make_cp, BURST, None)
    assert cp.drain_instance("b") == []
    got = await results(cp, await submit_all(cp, [req("r")]))
    _failed_without_target(got["r"], "a")
    assert [x.instance_id for x in backend.of("r")] == ["a"] and backend.on("b") == []
    cp.resume_instance("b")  # maintenance over: b serves again, and takes a's retries
    done = await results(cp, await submit_all(cp, [req("n0"), req("n1")]))
    for rid, r in done.items():
        tried = [x.instance_id for x in backend.of(rid)]
        assert r.status is S.COMPLETED and r.instance_id == "b" and tried in (["b"], ["a", "b"])
        assert r.retries == len(tried) - 1
    assert_identity(cp)
    await assert_quiet(backend, [a, b])


async def test_every_remaining_instance_tried_fails_with_the_last_error(servers, make_cp) -> None:
    limits = CoreLimits(max_retries=3, retry_backoff_s=0.01, retry_backoff_max_s=0.05)
    (a, b, c), cp, backend = await _fleet(
        servers, make_cp, BURST, BURST, FaultConfig(unhealthy=True), limits=limits
    )
    await wait_until(lambda: not cp.rotation.in_rotation("c"), what="c ejected")
    got = await results(cp, await submit_all(cp, [req("r")]))
    tried = [x.instance_id for x in backend.of("r")]
    assert sorted(tried) == ["a", "b"] and all(x.status == 503 for x in backend.of("r"))
    _failed_without_target(got["r"], tried[-1])
    assert got["r"].retries == 1  # one retry budgeted left (3), but nowhere to send it
    assert backend.on("c") == []
    assert_identity(cp)
    await assert_quiet(backend, [a, b, c])


async def test_a_waiting_retry_fails_when_its_target_leaves_rotation(servers, make_cp) -> None:
    slow_retry = CoreLimits(max_retries=2, retry_backoff_s=2.0, retry_jitter=0.0)
    (a, b), cp, backend = await _fleet(servers, make_cp, BURST, None, limits=slow_retry)
    cp.router.routing_strategy = "least_connections"  # ties go to the smaller id: a first
    await cp.submit_request(req("r"))
    await wait_until(lambda: cp.core.record("r").retries == 1, what="r failed once on a")
    assert await cp.get_request_status("r") is S.QUEUED  # waiting out its backoff, for b
    b.set_faults(unhealthy=True)
    r = await cp.get_result("r", timeout=1.5)  # well before the 2 s backoff ends
    assert r.status is S.FAILED and "left rotation" in r.error and "503" in r.error
    assert [x.instance_id for x in backend.of("r")] == ["a"] and backend.on("b") == []
    assert_identity(cp)
    await assert_quiet(backend, [a, b])


async def test_a_healthy_untried_instance_still_takes_the_retry(servers, make_cp) -> None:
    (a, b, c), cp, backend = await _fleet(
        servers, make_cp, BURST, FaultConfig(unhealthy=True), None, limits=FAST_LIMITS
    )
    await wait_until(lambda: not cp.rotation.in_rotation("b"), what="b ejected")
    ids = await submit_all(cp, [req(f"r{i}") for i in range(4)])
    got = await results(cp, ids)
    for rid, r in got.items():
        assert r.status is S.COMPLETED and r.instance_id == "c", (rid, r)
        tried = [x.instance_id for x in backend.of(rid)]
        assert tried in (["c"], ["a", "c"]) and r.retries == len(tried) - 1
    assert backend.on("b") == [] and backend.on("a")
    assert_identity(cp)
    await assert_quiet(backend, [a, b, c])

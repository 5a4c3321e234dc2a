"""Fault-injection suite: the manager over simulated vLLM servers that misbehave on purpose.

For every fault: which requests complete, which are retried (and where), which fail and with what
error; the accounting identity holds at the end; no engine request, connection or task is left
(``assert_quiet`` here, the fixtures' teardown for tasks and the HTTP session).
"""

from __future__ import annotations

import asyncio

from tests.reliability.faultkit import (
    HANG_TIMEOUTS,
    assert_identity,
    assert_quiet,
    instance,
    req,
    results,
    sim,
    submit_all,
    wait_until,
)

from vllm_control_plane.backends.base import Timeouts
from vllm_control_plane.core.core import NO_RETRY_TARGET
from vllm_control_plane.manager import RequestError
from vllm_control_plane.runtime.circuit import CircuitState
from vllm_control_plane.sim.faults import FaultConfig
from vllm_control_plane.types import RequestStatus

S = RequestStatus


async def _two(servers, make_cp, faults_a: FaultConfig | None = None, **kw):
    a, b = await servers(sim(1, faults_a), sim(2))
    cp, backend = make_cp(**kw)
    cp.register_instance(instance("a", a.port))
    cp.register_instance(instance("b", b.port))
    await cp.start()
    return a, b, cp, backend


async def test_crash_mid_stream_fails_streamed_requests_and_retries_the_others(
    servers, make_cp
) -> None:
    a, b, cp, backend = await _two(servers, make_cp, FaultConfig(crash_after_tokens=3))
    ids = await submit_all(cp, [req(f"r{i}", max_tokens=20) for i in range(8)])
    got = await results(cp, ids)
    for rid, res in got.items():
        attempts = backend.of(rid)
        first = attempts[0]
        if first.instance_id == "b":  # b is sound: done in one attempt
            assert res.status is S.COMPLETED and len(attempts) == 1
        elif first.tokens > 0:  # tokens reached the client: no silent retry, a clear error
            assert res.status is S.FAILED and len(attempts) == 1 and res.retries == 0
            assert "failed after its first token" in res.error and "on a" in res.error
            assert res.text and res.completion_tokens == 0
        else:  # cut before its first token: retried on b
            assert [x.instance_id for x in attempts] == ["a", "b"]
            assert res.status is S.COMPLETED and res.retries == 1 and res.instance_id == "b"
    assert any(r.status is S.FAILED for r in got.values())  # the crash did hit streams
    assert sum(r.status is S.COMPLETED for r in got.values()) >= 4  # every b request at least
    assert_identity(cp)
    await assert_quiet(backend, [a, b])


async def test_stream_that_breaks_mid_way_raises_after_the_partial_text(servers, make_cp) -> None:
    (a,) = await servers(sim(1, FaultConfig(crash_after_tokens=3)))
    cp, backend = make_cp()
    cp.register_instance(instance("a", a.port))
    await cp.start()
    pieces: list[str] = []
    try:
        async for text in cp.stream(req("s", max_tokens=30)):
            pieces.append(text)
        raise AssertionError("a broken stream must not end normally")
    except RequestError as e:
        assert e.result.status is S.FAILED and "connection to engine lost" in e.result.error
    assert 1 <= len("".join(pieces).split()) <= 3
    assert_identity(cp)
    await assert_quiet(backend, [a])


async def test_hang_times_out_before_first_token_retries_and_opens_the_circuit(
    servers, make_cp
) -> None:
    a, b, cp, backend = await _two(servers, make_cp, FaultConfig(hang=True), timeouts=HANG_TIMEOUTS)
    ids = await submit_all(cp, [req(f"r{i}") for i in range(6)])
    got = await results(cp, ids)
    assert all(r.status is S.COMPLETED and r.instance_id == "b" for r in got.values())
    on_a = backend.on("a")
    assert on_a and all(x.end == "failed:timeout" for x in on_a)
    assert all("first token timeout (0.5 s)" in x.error for x in on_a)
    for rid in ids:  # retried exactly when the first attempt hung on a
        assert got[rid].retries == (1 if backend.of(rid)[0].instance_id == "a" else 0)
    assert cp.breakers.state("a") is not CircuitState.CLOSED  # 3 timeouts in a row
    assert cp.rotation.reasons("a") == ["circuit"]
    # while the circuit is open, nothing more goes to a
    more = await submit_all(cp, [req(f"m{i}") for i in range(4)])
    assert all(r.instance_id == "b" for r in (await results(cp, more)).values())
    assert len(backend.on("a")) == len(on_a)
    assert_identity(cp)
    await assert_quiet(backend, [a, b])


async def test_5xx_burst_is_retried_elsewhere_then_the_instance_recovers(servers, make_cp) -> None:
    a, b, cp, backend = await _two(servers, make_cp, FaultConfig(error_rate=1.0, error_status=503))
    ids = await submit_all(cp, [req(f"r{i}") for i in range(8)])
    got = await results(cp, ids)
    assert all(r.status is S.COMPLETED and r.instance_id == "b" for r in got.values()), (
        got, backend.attempts)  # fmt: skip
    assert all(x.end == "failed:http_status" and x.status == 503 for x in backend.on("a"))
    assert cp.rotation.reasons("a") == ["circuit"]
    a.set_faults(error_rate=0.0)  # the burst is over: a probe readmits a
    await wait_until(lambda: cp.rotation.in_rotation("a"), what="a readmitted")
    assert cp.breakers.state("a") is CircuitState.CLOSED
    assert backend.probes[-1].tokens == 1 and backend.probes[-1].instance_id == "a"
    after = await submit_all(cp, [req(f"n{i}") for i in range(4)])
    done = await results(cp, after)
    assert {r.instance_id for r in done.values()} == {"a", "b"}
    assert all(r.status is S.COMPLETED and r.retries == 0 for r in done.values())
    assert_identity(cp)
    await assert_quiet(backend, [a, b])


async def test_slow_instance_still_completes_everything_without_retries(servers, make_cp) -> None:
    a, b, cp, backend = await _two(servers, make_cp, FaultConfig(slowdown=10.0))
    ids = await submit_all(cp, [req(f"r{i}", max_tokens=64) for i in range(8)])
    got = await results(cp, ids)
    assert all(r.status is S.COMPLETED and r.retries == 0 for r in got.values())
    assert {r.instance_id for r in got.values()} == {"a", "b"}  # round robin still uses both
    itl = [s.service.metrics.itl.sum / s.service.metrics.itl.count for s in (a, b)]
    assert itl[0] > 3 * itl[1]  # a's engine steps are 10x longer (model time: no timing luck)
    assert cp.breakers.is_closed("a") and cp.rotation.in_rotation("a")  # slow is not sick
    assert_identity(cp)
    await assert_quiet(backend, [a, b])


async def test_flapping_health_ejects_and_readmits_without_failing_requests(
    servers, make_cp
) -> None:
    a, b, cp, backend = await _two(servers, make_cp)
    seen: list[bool] = []

    async def flap() -> None:
        for i in range(8):
            a.set_faults(unhealthy=i % 2 == 0)
            await asyncio.sleep(0.15)  # three health rounds: enough to cross a threshold
            seen.append(cp.rotation.in_rotation("a"))
        a.set_faults(unhealthy=False)

    flapper = asyncio.create_task(flap())
    ids: list[str] = []
    for i in range(20):
        ids += await submit_all(cp, [req(f"r{i}")])
        await asyncio.sleep(0.05)
    await flapper
    got = await results(cp, ids)
    assert all(r.status is S.COMPLETED and r.retries == 0 for r in got.values())
    assert False in seen and True in seen  # a left rotation and came back, more than once
    await wait_until(lambda: cp.rotation.in_rotation("a"), what="a back after the flapping")
    assert_identity(cp)
    await assert_quiet(backend, [a, b])


async def test_malformed_first_frame_is_retried_later_frames_fail_clearly(servers, make_cp) -> None:
    a, b, cp, backend = await _two(servers, make_cp, FaultConfig(malformed_sse_after_tokens=0))
    ids = await submit_all(cp, [req(f"r{i}") for i in range(4)])
    got = await results(cp, ids)
    assert all(r.status is S.COMPLETED and r.instance_id == "b" for r in got.values())
    assert all(x.end == "failed:protocol" and "malformed SSE" in x.error for x in backend.on("a"))
    assert sum(r.retries for r in got.values()) == len(backend.on("a")) == 2
    a.set_faults(malformed_sse_after_tokens=3)
    late = await submit_all(cp, [req(f"m{i}") for i in range(4)])
    done = await results(cp, late)
    for rid, r in done.items():
        if r.instance_id == "a":  # three tokens went out, then garbage: FAILED, not retried
            assert r.status is S.FAILED and "malformed SSE frame" in r.error
            assert len(r.text.split()) == 3 and len(backend.of(rid)) == 1
        else:
            assert r.status is S.COMPLETED
    assert any(r.instance_id == "a" for r in done.values())
    assert_identity(cp)
    await assert_quiet(backend, [a, b])


async def test_connection_refused_is_retried_ejected_then_readmitted_on_startup(
    servers, make_cp
) -> None:
    late, b = await servers(sim(1, FaultConfig(startup_delay_s=0.6)), sim(2))
    cp, backend = make_cp()
    cp.register_instance(instance("a", late.port))  # nothing listens there yet
    cp.register_instance(instance("b", b.port))
    await cp.start()
    ids = await submit_all(cp, [req(f"r{i}") for i in range(4)])
    got = await results(cp, ids)
    assert all(r.status is S.COMPLETED and r.instance_id == "b" for r in got.values())
    assert all(x.end == "failed:connect" for x in backend.on("a"))
    await wait_until(lambda: not cp.rotation.in_rotation("a"), what="a ejected")
    await late.wait_ready(5)
    await wait_until(lambda: cp.rotation.in_rotation("a"), what="a readmitted", timeout=5)
    after = await submit_all(cp, [req(f"n{i}") for i in range(4)])
    assert {r.instance_id for r in (await results(cp, after)).values()} == {"a", "b"}
    assert_identity(cp)
    await assert_quiet(backend, [late, b])


async def test_engine_restart_fails_streaming_requests_retries_waiting_ones(
    servers, make_cp
) -> None:
    (a,) = await servers(sim(1, max_num_seqs=2))
    (b,) = await servers(sim(2))
    cp, backend = make_cp(strategy="least_request")
    cp.register_instance(instance("a", a.port, max_concurrent_requests=4))
    cp.register_instance(instance("b", b.port, max_concurrent_requests=2))
    await cp.start()
    ids = await submit_all(cp, [req(f"r{i}", max_tokens=1500) for i in range(6)])
    # two stream on a, two wait in a's engine queue (max_num_seqs=2), two run on b
    await wait_until(lambda: a.engine.stats().num_requests_waiting == 2, what="a's queue")
    await wait_until(lambda: sum(x.tokens > 0 for x in backend.on("a")) == 2, what="a streams")
    a.set_faults(startup_delay_s=0.3)  # restart: connections cut, port closed for 0.3 s
    got = await results(cp, ids)
    for rid, r in got.items():
        first = backend.of(rid)[0]
        if first.instance_id == "a" and first.tokens > 0:
            assert r.status is S.FAILED and "after its first token" in r.error
        elif first.instance_id == "a":
            assert r.status is S.COMPLETED and r.retries == 1 and r.instance_id == "b"
        else:
            assert r.status is S.COMPLETED and r.retries == 0
    assert sum(r.status is S.FAILED for r in got.values()) == 2
    await wait_until(lambda: a.ready and cp.rotation.in_rotation("a"), what="a back", timeout=5)
    assert_identity(cp)
    await assert_quiet(backend, [a, b])


async def test_hang_without_another_instance_fails_with_the_timeout(servers, make_cp) -> None:
    (a,) = await servers(sim(1, FaultConfig(hang=True)))
    cp, backend = make_cp(timeouts=Timeouts(connect=0.5, first_token=0.2, idle=0.2))
    cp.register_instance(instance("a", a.port))
    await cp.start()
    got = await results(cp, await submit_all(cp, [req("only")]))
    r = got["only"]
    assert r.status is S.FAILED and "first token timeout (0.2 s)" in r.error
    assert NO_RETRY_TARGET in r.error
    assert_identity(cp)
    await assert_quiet(backend, [a])


async def test_idle_stream_timeout_fails_after_tokens(servers, make_cp) -> None:
    (a,) = await servers(sim(1))
    cp, backend = make_cp(timeouts=Timeouts(connect=0.5, first_token=2, idle=0.15))
    cp.register_instance(instance("a", a.port))
    await cp.start()
    await cp.submit_request(req("slow", max_tokens=200))
    await wait_until(lambda: backend.of("slow") and backend.of("slow")[0].tokens > 0)
    a.set_faults(slowdown=2000.0)  # the engine nearly stops mid-stream
    r = await cp.get_result("slow", timeout=5)
    assert r.status is S.FAILED and "stream idle timeout (0.15 s)" in r.error
    assert r.text  # what was streamed stays visible
    assert_identity(cp)
    a.set_faults(slowdown=1.0)
    await assert_quiet(backend, [a])

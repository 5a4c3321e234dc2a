"""Adaptive concurrency (core/concurrency.py) and waiting for a busy instance holding the prefix
(``RoutingStrategy.wait_for``, ``predictive``): the controller alone, then through ControlCore."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from tests.core.core_harness import FirstCandidate, instance, request

from vllm_control_plane.core.concurrency import AdaptiveConcurrency, ConcurrencyController
from vllm_control_plane.core.core import ControlCore, Dispatch
from vllm_control_plane.core.limits import CoreLimits
from vllm_control_plane.types import RequestStatus

SETTINGS = AdaptiveConcurrency(target=0.8, backoff=0.5, increase=2.0, min_limit=2)


def feed(ctl: ConcurrencyController, ratio: float, now: float, *, active: int = 0,
         slo: float = 50.0, iid: str = "a", ceiling: int = 64, since: float | None = None,
         ) -> bool:  # fmt: skip
    """One sample of a request dispatched at ``since`` (default: just before ``now``)."""
    start = now - 0.1 if since is None else since
    return ctl.observe(iid, ratio * slo, slo, active=active, ceiling=ceiling,
                       dispatched_at=start, now=now)  # fmt: skip


# ------------------------------------------------------------------------- controller ----
def test_no_samples_no_limit() -> None:
    assert ConcurrencyController(SETTINGS).limit("a") is None


def test_breach_cuts_once_per_generation_of_requests_down_to_the_floor() -> None:
    ctl = ConcurrencyController(SETTINGS)
    assert feed(ctl, 1.5, now=1.0) and ctl.limit("a") == 32  # starts at the ceiling, halves
    # requests dispatched before the cut still report the old overload: no second cut for it
    assert not feed(ctl, 1.5, now=1.5, since=0.5) and ctl.limit("a") == 32
    assert feed(ctl, 1.5, now=2.0, since=1.2) and ctl.limit("a") == 16  # admitted after: counts
    for t in range(3, 20):
        feed(ctl, 1.5, now=float(t))
    assert ctl.limit("a") == SETTINGS.min_limit


def test_grows_only_while_the_limit_binds_and_stops_at_the_ceiling() -> None:
    ctl = ConcurrencyController(SETTINGS)
    feed(ctl, 2.0, now=0.0)  # 64 -> 32, ratio EWMA high
    for t in range(100):  # healthy samples bring the EWMA down; the instance is nearly idle
        feed(ctl, 0.1, now=10.0 + t, active=1)
    assert ctl.limit("a") == 32  # not binding: no growth
    for t in range(2000):
        feed(ctl, 0.1, now=200.0 + t, active=100)
    assert ctl.limit("a") == 64


def test_samples_of_looser_slos_do_not_drive_the_limit() -> None:
    ctl = ConcurrencyController(SETTINGS)
    feed(ctl, 0.1, now=0.0, slo=50.0)  # the protected class: 50 ms
    assert not feed(ctl, 3.0, now=5.0, slo=200.0)  # an elastic request ran slow: ignored
    assert ctl.limit("a") == 64


def test_admit_holds_only_elastic_requests_at_the_limit() -> None:
    ctl = ConcurrencyController(SETTINGS)
    feed(ctl, 2.0, now=0.0, iid="a")  # a: limit 32
    a, b = instance("a", active_requests=40), instance("b", active_requests=40)
    room = (a, b)
    assert ctl.admit(50.0, room) == room  # the protected SLO is never held
    assert list(ctl.admit(None, room)) == [b]  # no TPOT SLO: elastic; b has no limit yet
    assert list(ctl.admit(200.0, room)) == [b]
    a.active_requests = 31
    assert ctl.admit(None, room) == room


@given(st.lists(st.tuples(st.floats(0.0, 5.0), st.integers(0, 200)), max_size=200))
def test_limit_stays_within_floor_and_ceiling(samples: list[tuple[float, int]]) -> None:
    ctl = ConcurrencyController(SETTINGS)
    for k, (ratio, active) in enumerate(samples):
        feed(ctl, ratio, now=k * 0.3, active=active, ceiling=40)
        limit = ctl.limit("a")
        assert limit is not None and SETTINGS.min_limit <= limit <= 40


def test_bad_settings_are_refused() -> None:
    for bad in ({"backoff": 1.0}, {"target": 0.0}, {"min_limit": 0}, {"increase": 0.0}):
        try:
            AdaptiveConcurrency(**bad)  # type: ignore[arg-type]
        except ValueError:
            continue
        raise AssertionError(f"{bad} accepted")


# ------------------------------------------------------------------- through the core ----
def _complete(core: ControlCore, d: Dispatch, start: float, tpot_s: float, out: int = 11) -> float:
    core.on_first_token(d.request_id, start + 0.01)
    end = start + 0.01 + tpot_s * (out - 1)
    core.on_complete(d.request_id, end, prompt_tokens=10, completion_tokens=out,
                     finish_reason="length")  # fmt: skip
    return end


def test_slow_decode_holds_batch_requests_while_interactive_ones_go() -> None:
    limits = CoreLimits(adaptive_concurrency=SETTINGS)
    core = ControlCore("priority", FirstCandidate(), limits=limits)
    core.add_instance(instance("a", max_concurrent_requests=8))
    core.submit(request("i0", tpot_slo_ms=50), 0.0, prompt_tokens=10)
    (d,) = core.next_dispatches(0.0)
    now = _complete(core, d, 0.0, tpot_s=0.1)  # TPOT 100 ms against 50: a breach
    assert core.concurrency_limit("a") == 4
    for k in range(4):  # the instance fills up to its adaptive limit with batch work
        core.submit(request(f"b{k}"), now, prompt_tokens=10)
    assert len(core.next_dispatches(now)) == 4
    core.submit(request("b-held"), now, prompt_tokens=10)
    core.submit(request("i1", tpot_slo_ms=50), now, prompt_tokens=10)
    assert [x.request_id for x in core.next_dispatches(now)] == ["i1"]  # under the cap of 8
    assert core.status("b-held") is RequestStatus.QUEUED


def test_a_fleet_without_tpot_slos_keeps_its_caps() -> None:
    core = ControlCore("fifo", FirstCandidate(), limits=CoreLimits(adaptive_concurrency=SETTINGS))
    core.add_instance(instance("a", max_concurrent_requests=3))
    for k in range(5):
        core.submit(request(f"r{k}"), 0.0, prompt_tokens=10)
    first = core.next_dispatches(0.0)
    assert len(first) == 3 and core.concurrency_limit("a") == 3
    _complete(core, first[0], 0.0, tpot_s=1.0)  # very slow, but nobody's SLO: no cut
    assert core.concurrency_limit("a") == 3 and len(core.next_dispatches(20.0)) == 1


# ---------------------------------------------------------- waiting for the prefix holder ----
def _predictive_core(cap: int) -> ControlCore:
    core = ControlCore("fifo", "predictive")
    core.add_instance(instance("a", max_concurrent_requests=cap))
    core.add_instance(instance("b", max_concurrent_requests=cap))
    return core


def _chat(rid: str, blocks: tuple[int, ...]) -> tuple:
    return request(rid, max_tokens=8), {"prompt_tokens": 16 * len(blocks), "block_hashes": blocks}


HISTORY = tuple(range(1, 940))  # a 15K-token conversation: ~0.6 s of prefill on an H100


def test_predictive_parks_a_request_for_the_busy_instance_holding_its_prefix() -> None:
    core = _predictive_core(cap=4)
    req, kw = _chat("turn1", HISTORY)
    core.submit(req, 0.0, **kw)
    (first,) = core.next_dispatches(0.0)
    holder = first.instance_id
    now = _complete(core, first, 0.6, tpot_s=0.01, out=2)  # the holder's latency: ~0.6 s
    follow = []
    for k in range(4):  # further turns fill the holder: their prefix is cached there
        req, kw = _chat(f"follow{k}", (*HISTORY, 1000 + k))
        core.submit(req, now, **kw)
        follow += core.next_dispatches(now)
    assert {d.instance_id for d in follow} == {holder}
    req, kw = _chat("turn3", (*HISTORY, 2000))
    core.submit(req, now, **kw)
    # waiting ~0.15 s for one of the holder's 4 slots beats prefilling 15K tokens elsewhere
    assert core.next_dispatches(now) == []
    assert core.status("turn3") is RequestStatus.QUEUED
    assert core.requests_on("b" if holder == "a" else "a") == []
    now = _complete(core, follow[0], now, tpot_s=0.01, out=8)
    (d,) = core.next_dispatches(now)
    assert d.request_id == "turn3" and d.instance_id == holder


def test_predictive_does_not_wait_without_an_estimate_of_the_wait() -> None:
    core = _predictive_core(cap=1)
    req, kw = _chat("turn1", HISTORY)
    core.submit(req, 0.0, **kw)
    (first,) = core.next_dispatches(0.0)  # still running: no completed request, no latency
    req, kw = _chat("turn2", (*HISTORY, 2000))
    core.submit(req, 0.0, **kw)
    (d,) = core.next_dispatches(0.0)
    assert d.request_id == "turn2" and d.instance_id != first.instance_id

"""The pure pieces of the reliability machinery, on a fake clock: circuit breakers, the retry
budget, health thresholds, rotation reasons, and the core's retry rules (jitter, veto, the
terminal hook)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vllm_control_plane.core.core import ControlCore
from vllm_control_plane.core.limits import CoreLimits
from vllm_control_plane.runtime.circuit import (
    CircuitBreakers,
    CircuitConfig,
    CircuitState,
    blames_instance,
)
from vllm_control_plane.runtime.monitor import HealthTracker, MonitorConfig
from vllm_control_plane.runtime.retry_budget import RetryBudget, RetryBudgetConfig
from vllm_control_plane.runtime.rotation import Rotation
from vllm_control_plane.types import (
    ExecutionInstance,
    RequestMetadata,
    RequestPriority,
    RequestStatus,
)

C = CircuitState


# ------------------------------------------------------------------ circuit breakers


def test_circuit_opens_after_consecutive_failures_only() -> None:
    cb = CircuitBreakers(CircuitConfig(failure_threshold=3, open_s=1.0))
    assert not cb.record_failure("a", 0.0) and not cb.record_failure("a", 0.1)
    cb.record_success("a")  # the streak is broken
    assert not cb.record_failure("a", 0.2) and not cb.record_failure("a", 0.3)
    assert cb.record_failure("a", 0.4) and cb.state("a") is C.OPEN and cb.opened_at("a") == 0.4
    assert not cb.record_failure("a", 0.5)  # already open: no second transition
    assert cb.is_closed("b")


def test_half_open_probe_closes_or_reopens_with_doubled_cooldown() -> None:
    cb = CircuitBreakers(CircuitConfig(failure_threshold=1, open_s=1.0, max_open_s=3.0))
    cb.record_failure("a", 10.0)
    assert cb.due_probes(10.9) == [] and cb.due_probes(11.0) == ["a"]
    assert cb.state("a") is C.HALF_OPEN and cb.due_probes(11.5) == []  # one probe at a time
    assert not cb.probe_result("a", False, 11.2)  # cooldown 2 s now
    assert cb.due_probes(13.1) == [] and cb.due_probes(13.2) == ["a"]
    cb.probe_result("a", False, 13.3)  # 4 s capped at 3 s
    assert cb.due_probes(16.2) == [] and cb.due_probes(16.3) == ["a"]
    assert cb.probe_result("a", True, 16.4) and cb.state("a") is C.CLOSED
    assert cb.opened_at("a") is None
    assert cb.record_failure("a", 17.0)  # a fresh streak: threshold 1 opens it again


def test_probe_soon_cuts_a_long_cooldown_short() -> None:
    cb = CircuitBreakers(CircuitConfig(failure_threshold=1, open_s=8.0, max_open_s=30.0))
    cb.record_failure("a", 0.0)
    assert cb.due_probes(1.0) == []
    cb.probe_soon("a", 1.0)
    assert cb.due_probes(1.0) == ["a"]
    cb.probe_soon("a", 2.0)  # half-open already: a probe is in flight, nothing changes
    assert cb.state("a") is C.HALF_OPEN and cb.due_probes(2.0) == []


def test_probe_result_for_a_forgotten_instance_is_ignored() -> None:
    cb = CircuitBreakers(CircuitConfig(failure_threshold=1))
    cb.record_failure("a", 0.0)
    cb.due_probes(5.0)
    cb.forget("a")
    assert not cb.probe_result("a", True, 6.0) and cb.is_closed("a")


def test_zero_threshold_disables_passive_detection() -> None:
    cb = CircuitBreakers(CircuitConfig(failure_threshold=0))
    assert not any(cb.record_failure("a", float(t)) for t in range(100))


@pytest.mark.parametrize(
    ("kind", "status", "blames"),
    [
        ("connect", None, True),
        ("timeout", None, True),
        ("protocol", None, True),
        ("stream_error", None, True),
        ("http_status", 503, True),
        ("http_status", 429, True),
        ("http_status", 400, False),
        ("http_status", 404, False),
    ],
)
def test_which_failures_blame_the_instance(kind: str, status: int | None, blames: bool) -> None:
    assert blames_instance(kind, status) is blames


def test_circuit_config_is_checked() -> None:
    with pytest.raises(ValueError):
        CircuitConfig(open_s=2.0, max_open_s=1.0)
    with pytest.raises(ValueError):
        CircuitConfig(failure_threshold=-1)


# ------------------------------------------------------------------ retry budget


def test_budget_allows_ratio_of_recent_requests_plus_floor() -> None:
    b = RetryBudget(RetryBudgetConfig(ratio=0.2, floor=2, window_s=10))
    for _ in range(50):
        b.on_request(1.0)
    allowed = 0
    while b.veto(1.0) is None:
        b.on_retry(1.0)
        allowed += 1
    assert allowed == 12  # 0.2 x 50 + 2
    assert "retry budget exhausted: 12 retries" in (b.veto(1.0) or "")


def test_budget_window_slides() -> None:
    b = RetryBudget(RetryBudgetConfig(ratio=0.0, floor=1, window_s=10, buckets=10))
    b.on_retry(0.0)
    assert b.veto(5.0) is not None  # the one retry of the window is used
    assert b.veto(11.0) is None  # ... and has left the window
    assert b.counts(11.0) == (0, 0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 1.0), st.booleans()), max_size=200))
def test_budget_allows_no_retry_beyond_the_bound(events: list[tuple[float, bool]]) -> None:
    cfg = RetryBudgetConfig(ratio=0.2, floor=3, window_s=5.0, buckets=5)
    b = RetryBudget(cfg)
    now = 0.0
    for step, is_retry in events:
        now += step
        if not is_retry:
            b.on_request(now)
        elif b.veto(now) is None:
            b.on_retry(now)  # every retry it allows fits the window it is made in
            requests, retries = b.counts(now)
            assert retries <= cfg.ratio * requests + cfg.floor


# ------------------------------------------------------------------ health thresholds, rotation


def test_health_tracker_needs_consecutive_results_both_ways() -> None:
    t = HealthTracker(unhealthy_threshold=2, healthy_threshold=3)
    assert t.observe("a", False) is None and t.observe("a", True) is None
    assert t.observe("a", False) is None and t.observe("a", False) is False
    assert not t.healthy("a") and t.observe("a", False) is None
    assert t.observe("a", True) is None and t.observe("a", True) is None
    assert t.observe("a", True) is True and t.healthy("a")
    t.forget("a")
    assert t.healthy("a")


def test_monitor_config_is_checked() -> None:
    with pytest.raises(ValueError):
        MonitorConfig(health_timeout=0)
    with pytest.raises(ValueError):
        MonitorConfig(unhealthy_threshold=0)


def test_rotation_needs_every_reason_cleared() -> None:
    r = Rotation()
    assert r.set("a", "health", True) is False  # left rotation
    assert r.set("a", "circuit", True) is None  # still out
    assert r.set("a", "health", False) is None and r.reasons("a") == ["circuit"]
    assert r.set("a", "circuit", False) is True and r.in_rotation("a")


# ------------------------------------------------------------------ the core's retry rules


def _core(**limits: object) -> ControlCore:
    c = ControlCore("fifo", "round_robin", limits=CoreLimits(**limits))  # type: ignore[arg-type]
    for iid in "abc":
        c.add_instance(ExecutionInstance(instance_id=iid, host="h", port=1,
                                         model_name="llama-3-8b", gpu_type="H100"))  # fmt: skip
    return c


def test_retry_delay_doubles_is_capped_and_jittered_upwards() -> None:
    c = _core(retry_backoff_s=0.1, retry_backoff_max_s=0.3, retry_jitter=0.5)
    for retry, base in ((1, 0.1), (2, 0.2), (3, 0.3), (6, 0.3)):
        delays = [c.retry_delay(retry) for _ in range(200)]
        assert all(base <= d < base * 1.5 for d in delays)
        assert max(delays) - min(delays) > base * 0.3  # actually spread out
    assert _core(retry_backoff_s=0.1, retry_jitter=0.0).retry_delay(2) == pytest.approx(0.2)


def test_retry_veto_fails_the_request_with_its_reason() -> None:
    c = _core(max_retries=2)
    c.submit(RequestMetadata(request_id="r"), 0.0, prompt_tokens=8)
    c.next_dispatches(0.0)
    assert not c.on_failed("r", 0.1, "boom", retryable=True, retry_veto="budget says no")
    rec = c.record("r")
    assert rec.status is RequestStatus.FAILED and rec.reason.endswith("(budget says no)")


def test_failure_after_first_token_names_that_reason_even_if_not_retryable() -> None:
    c = _core()
    c.submit(RequestMetadata(request_id="r"), 0.0, prompt_tokens=8)
    c.next_dispatches(0.0)
    c.on_first_token("r", 0.1)
    c.on_failed("r", 0.2, "cut", retryable=False)
    assert "failed after its first token" in c.record("r").reason


def test_on_terminal_sees_every_ending_including_shed_requests() -> None:
    c = _core(max_queued=1)
    ended: list[tuple[str, RequestStatus]] = []
    c.on_terminal = lambda rec: ended.append((rec.request_id, rec.status))
    P = RequestPriority
    c.submit(RequestMetadata(request_id="low", priority=P.LOW), 0.0, prompt_tokens=8)
    c.submit(RequestMetadata(request_id="hi", priority=P.HIGH), 0.0, prompt_tokens=8)
    assert ended == [("low", RequestStatus.REJECTED)]
    c.cancel("hi", 0.1)
    assert ended[-1] == ("hi", RequestStatus.CANCELLED)

"""Retries go only where they can run: an instance in rotation the request has not failed on.

Instances out of rotation (unhealthy — failed health checks or an open circuit — or draining) do
not count as retry targets, nor do instances the request already failed on. With no target left,
at the failure or later while the retry waits out its backoff, the request ends FAILED with its
original error — it is never parked waiting for an instance that cannot take it. Virtual time.
"""

from __future__ import annotations

import pytest
from core_harness import FirstCandidate, VirtualFleet, instance, request

from vllm_control_plane.core.core import NO_RETRY_TARGET, ControlCore
from vllm_control_plane.core.limits import CoreLimits
from vllm_control_plane.types import RequestStatus

S = RequestStatus


def core(**limits: object) -> ControlCore:
    limits.setdefault("retry_backoff_s", 0.0)
    return ControlCore("fifo", FirstCandidate(), limits=CoreLimits(**limits))  # type: ignore[arg-type]


def settled(c: ControlCore) -> None:
    """Nothing live, nothing queued, the books balance."""
    counters = c.counters()
    assert counters.identity_holds() and counters.in_flight == 0, counters
    assert c.summary(0.0)["pending_requests"] == 0


def out_of_rotation(c: ControlCore, iid: str, how: str, now: float) -> None:
    if how == "unhealthy":  # failed health checks, or its circuit opened
        c.set_health(iid, False, now)
    elif how == "draining":
        c.drain_instance(iid)
    else:
        c.remove_instance(iid)


@pytest.mark.parametrize("how", ["unhealthy", "draining"])
def test_failure_with_the_only_other_instance_out_of_rotation_fails_at_once(how: str) -> None:
    c = core()
    fleet = VirtualFleet(c)
    fleet.add(instance("a"), instance("b"))
    out_of_rotation(c, "b", how, 0.0)
    fleet.failing = {"a"}  # one 503 on a
    fleet.submit_at(0.0, request("r"))
    fleet.run()
    rec = c.record("r")
    assert rec.status is S.FAILED and rec.retries == 0
    assert rec.reason == f"failed on a: injected failure ({NO_RETRY_TARGET})"
    assert rec.error == "injected failure"
    assert [d.instance_id for d in fleet.dispatches] == ["a"]
    # a recovering changes nothing: the request had already ended, nothing waits for it
    fleet.failing = set()
    c.set_health("a", False, fleet.now)
    c.set_health("a", True, fleet.now + 1)
    assert c.next_dispatches(fleet.now + 1) == []
    assert c.status("r") is S.FAILED
    settled(c)


def test_every_remaining_instance_already_tried_fails_with_the_last_error() -> None:
    c = core(max_retries=3)
    fleet = VirtualFleet(c)
    fleet.add(instance("a"), instance("b"), instance("c"))
    c.set_health("c", False, 0.0)
    fleet.failing = {"a", "b"}
    fleet.submit_at(0.0, request("r"))
    fleet.run()
    rec = c.record("r")
    assert [d.instance_id for d in fleet.dispatches] == ["a", "b"]
    assert rec.status is S.FAILED and rec.retries == 1  # retries left (3), targets not
    assert rec.reason == f"failed on b: injected failure ({NO_RETRY_TARGET})"
    assert c.counters().retries == 1 and c.counters().failed == 1
    settled(c)


def test_a_healthy_untried_instance_still_gets_the_retry() -> None:
    c = core()
    fleet = VirtualFleet(c)
    fleet.add(instance("a"), instance("b"), instance("c"))
    c.set_health("b", False, 0.0)  # out of rotation: skipped, c takes the retry
    fleet.failing = {"a"}
    fleet.submit_at(0.0, request("r"))
    fleet.run()
    rec = c.record("r")
    assert rec.status is S.COMPLETED and rec.instance_id == "c" and rec.retries == 1
    assert [d.instance_id for d in fleet.dispatches] == ["a", "c"]
    settled(c)


@pytest.mark.parametrize("how", ["unhealthy", "draining", "removed"])
def test_a_waiting_retry_fails_when_its_last_target_leaves_rotation(how: str) -> None:
    c = core(retry_backoff_s=0.5, retry_jitter=0.0)
    fleet = VirtualFleet(c)
    fleet.add(instance("a"), instance("b"))
    fleet.failing = {"a"}
    fleet.submit_at(0.0, request("r"))
    fleet.run(until=0.1)  # failed on a at 0.001; the retry for b waits out its backoff
    assert c.status("r") is S.QUEUED and c.record("r").retries == 1
    out_of_rotation(c, "b", how, 0.2)
    rec = c.record("r")
    assert rec.status is S.FAILED and 0.1 <= (rec.finished_at or 0) <= 0.2  # at once
    assert rec.reason.startswith(f"failed on a: injected failure ({NO_RETRY_TARGET}")
    assert "left rotation" in rec.reason
    fleet.failing = set()
    fleet.run()  # a is healthy, but r has ended: nothing is dispatched again
    assert [d.instance_id for d in fleet.dispatches] == ["a"]
    settled(c)


def test_a_waiting_retry_keeps_its_target_while_one_remains() -> None:
    c = core(retry_backoff_s=0.5, retry_jitter=0.0)
    fleet = VirtualFleet(c)
    fleet.add(instance("a"), instance("b"), instance("c"))
    fleet.failing = {"a"}
    fleet.submit_at(0.0, request("r"))
    fleet.run(until=0.1)
    c.set_health("b", False, 0.1)  # c is still in rotation and untried: the retry waits for it
    assert c.status("r") is S.QUEUED
    fleet.run()
    rec = c.record("r")
    assert rec.status is S.COMPLETED and rec.instance_id == "c"
    assert fleet.dispatches[1].decision.decided_at >= 0.5  # the backoff still held
    settled(c)


def test_the_rule_holds_for_many_requests_failing_together() -> None:
    c = core(max_retries=2)
    fleet = VirtualFleet(c)
    fleet.add(instance("a", max_concurrent_requests=50), instance("b"), instance("c"))
    c.drain_instance("b")
    c.set_health("c", False, 0.0)
    fleet.failing = {"a"}
    for k in range(20):
        fleet.submit_at(0.0, request(f"r{k}"))
    fleet.run()
    for k in range(20):
        rec = c.record(f"r{k}")
        assert rec.status is S.FAILED and NO_RETRY_TARGET in (rec.reason or "")
    assert c.counters().failed == 20 and c.counters().retries == 0
    settled(c)

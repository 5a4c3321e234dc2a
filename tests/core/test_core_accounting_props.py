"""Property: under any sequence of operations the core's books balance.

After every step: submitted = completed + failed + cancelled + rejected + timeout + in_flight;
every live request is counted where it is (queue or instance); no instance holds more than its
concurrency budget; finished requests never come back to life; a queued retry always has an
instance in rotation it has not failed on.
"""

from __future__ import annotations

import contextlib

from core_harness import instance, request
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from vllm_control_plane.core.core import ControlCore
from vllm_control_plane.core.lifecycle import IllegalTransition
from vllm_control_plane.core.limits import CoreLimits
from vllm_control_plane.core.policies import POLICIES
from vllm_control_plane.types import RequestPriority, RequestStatus

S = RequestStatus
INSTANCES = ["i0", "i1", "i2"]


class CoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        limits = CoreLimits(max_queued=6, max_retries=1, retry_backoff_s=0.01, history_size=500)
        self.core = ControlCore("fifo", "round_robin", limits=limits)
        self.now = 0.0
        self.ids: list[str] = []
        self.terminal: dict[str, S] = {}
        for iid in INSTANCES[:2]:
            self.core.add_instance(instance(iid, max_concurrent_requests=2))

    # -- helpers ------------------------------------------------------------------------------
    def live(self, *statuses: S) -> list[str]:
        return [r for r in self.ids if r not in self.terminal and self.core.status(r) in statuses]

    def _record_terminals(self) -> None:
        for rid in self.ids:
            status = self.core.status(rid)
            if rid in self.terminal:
                assert status is self.terminal[rid], "a finished request changed state"
            elif status.is_terminal:
                self.terminal[rid] = status

    # -- rules --------------------------------------------------------------------------------
    @rule(
        prio=st.sampled_from(list(RequestPriority)),
        slo=st.sampled_from([None, 50, 5_000]),
        hard=st.booleans(),
        model=st.sampled_from([None, "llama-3-8b", "nope"]),
        budget=st.sampled_from([None, 1e-9, 1.0]),
    )
    def submit(self, prio, slo, hard, model, budget) -> None:  # type: ignore[no-untyped-def]
        rid = f"r{len(self.ids)}"
        req = request(rid, priority=prio, slo_deadline_ms=slo, model_name=model, cost_budget=budget)
        self.core.submit(req, self.now, prompt_tokens=16, hard_deadline=hard)
        self.ids.append(rid)

    @rule(dt=st.floats(0.0, 0.2))
    def advance_and_dispatch(self, dt: float) -> None:
        self.now += dt
        self.core.expire(self.now)
        for d in self.core.next_dispatches(self.now):
            assert self.core.status(d.request_id) is S.SCHEDULED

    @precondition(lambda self: self.live(S.SCHEDULED, S.RUNNING))
    @rule(data=st.data(), step=st.sampled_from(["start", "first", "complete", "fail", "fatal"]))
    def feedback(self, data, step: str) -> None:  # type: ignore[no-untyped-def]
        rid = data.draw(st.sampled_from(self.live(S.SCHEDULED, S.RUNNING)))
        c, now = self.core, self.now
        if step == "start":
            c.on_started(rid, now)
        elif step == "first":
            c.on_first_token(rid, now)
        elif step == "complete":
            c.on_complete(rid, now, prompt_tokens=16, completion_tokens=4, finish_reason="stop")
        else:
            c.on_failed(rid, now, "boom", retryable=step == "fail")

    @precondition(lambda self: self.ids)
    @rule(data=st.data(), timeout=st.booleans())
    def stop(self, data, timeout: bool) -> None:  # type: ignore[no-untyped-def]
        rid = data.draw(st.sampled_from(self.ids))
        res = (self.core.on_timeout if timeout else self.core.cancel)(rid, self.now)
        assert res.changed == (rid not in self.terminal)

    @precondition(lambda self: self.live(S.QUEUED))
    @rule(data=st.data())
    def illegal_feedback_on_queued_raises(self, data) -> None:  # type: ignore[no-untyped-def]
        rid = data.draw(st.sampled_from(self.live(S.QUEUED)))
        try:
            self.core.on_failed(rid, self.now, "x", retryable=True)
        except IllegalTransition:
            return
        raise AssertionError("feedback for a queued request must raise")

    @rule(iid=st.sampled_from(INSTANCES), healthy=st.booleans())
    def health(self, iid: str, healthy: bool) -> None:
        if iid in {i.instance_id for i in self.core.instances()}:
            self.core.set_health(iid, healthy, self.now)

    @rule(iid=st.sampled_from(INSTANCES), drain=st.booleans())
    def drain_or_resume(self, iid: str, drain: bool) -> None:
        if iid in {i.instance_id for i in self.core.instances()}:
            (self.core.drain_instance if drain else self.core.resume_instance)(iid)

    @rule(iid=st.sampled_from(INSTANCES))
    def add_or_remove(self, iid: str) -> None:
        if iid in {i.instance_id for i in self.core.instances()}:
            self.core.remove_instance(iid)
        else:
            # ValueError: still finishing requests from its previous registration
            with contextlib.suppress(ValueError):
                self.core.add_instance(instance(iid, max_concurrent_requests=2))

    @rule(policy=st.sampled_from(sorted(POLICIES)))
    def switch_policy(self, policy: str) -> None:
        self.core.set_policy(policy)

    # -- invariants ---------------------------------------------------------------------------
    @invariant()
    def books_balance(self) -> None:
        self._record_terminals()
        counters = self.core.counters()
        assert counters.identity_holds(), counters
        assert counters.submitted == len(self.ids)
        assert counters.in_flight == len(self.ids) - len(self.terminal)
        on_instance = len(self.live(S.SCHEDULED, S.RUNNING))
        assert self.core.summary(self.now)["running_requests"] == on_instance
        assert sum(i.active_requests for i in self.core.instances()) <= on_instance
        for inst in self.core.instances():
            assert inst.active_requests <= inst.max_concurrent_requests
        assert self.core.summary(self.now)["pending_requests"] == len(self.live(S.QUEUED))

    @invariant()
    def queued_retries_have_somewhere_to_go(self) -> None:
        """A retry waits only while an instance in rotation it has not failed on exists."""
        for rid in self.live(S.QUEUED):
            rec = self.core.record(rid)
            if rec.excluded:
                assert any(
                    i.is_healthy and i.is_available and i.instance_id not in rec.excluded
                    for i in self.core.instances()
                    if i.model_name == rec.model_name
                ), (rid, rec.excluded, [(i.instance_id, i.is_healthy, i.is_available)
                                        for i in self.core.instances()])  # fmt: skip


TestCoreMachine = CoreMachine.TestCase
TestCoreMachine.settings = settings(
    max_examples=100, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)  # fmt: skip

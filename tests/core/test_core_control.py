"""ControlCore end to end in virtual time: admission, dispatch, feedback, bad input."""

from __future__ import annotations

import pytest
from core_harness import FirstCandidate, VirtualFleet, instance, request

from vllm_control_plane.core.core import ControlCore, DuplicateRequestId
from vllm_control_plane.core.lifecycle import IllegalTransition
from vllm_control_plane.core.limits import CoreLimits
from vllm_control_plane.types import ParallelismType, RequestPriority, RequestStatus

S = RequestStatus


def core(policy: str = "fifo", strategy: object = None, **limits: object) -> ControlCore:
    return ControlCore(
        policy,
        strategy or FirstCandidate(),
        limits=CoreLimits(**limits),  # type: ignore[arg-type]
    )


def identity(c: ControlCore) -> None:
    assert c.counters().identity_holds(), c.counters()


def test_happy_path_reaches_completed_with_timings_and_cost() -> None:
    c = core()
    fleet = VirtualFleet(c)
    fleet.add(instance("a", max_concurrent_requests=4))
    fleet.submit_at(0.0, request("r1", slo_deadline_ms=1000))
    fleet.run()
    rec = c.record("r1")
    assert rec.status is S.COMPLETED and rec.instance_id == "a"
    assert rec.scheduled_at == 0.0 and rec.first_token_at == pytest.approx(0.05)
    assert rec.ttft_ms == pytest.approx(50) and rec.tpot_ms == pytest.approx(10)
    assert rec.cost_usd > 0 and rec.decision is not None
    assert rec.decision.predicted_latency_ms and rec.decision.estimated_cost
    m = c.metrics(fleet.now)
    assert m.completed_requests == 1 and m.slo_compliance_rate == 1.0
    assert m.total_cost == pytest.approx(rec.cost_usd)
    assert m.cost_per_token == pytest.approx(rec.cost_usd / 16)
    identity(c)


def test_unknown_names_raise_with_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="valid: fifo, priority"):
        ControlCore("nope")
    with pytest.raises(ValueError, match="round_robin"):
        ControlCore("fifo", "nope")
    c = core()
    with pytest.raises(ValueError, match="valid"):
        c.set_policy("nope")
    assert c.policy_name == "fifo"


def test_duplicate_live_request_id_raises_and_changes_nothing() -> None:
    c = core()
    c.add_instance(instance("a"))
    c.submit(request("dup"), 0.0, prompt_tokens=8)
    before = c.counters()
    with pytest.raises(DuplicateRequestId, match="already in flight") as refused:
        c.submit(request("dup"), 0.1, prompt_tokens=8)
    assert refused.value.live and refused.value.status is S.QUEUED
    assert c.counters() == before and c.status("dup") is S.QUEUED
    identity(c)


def test_an_id_whose_request_ended_without_an_answer_may_be_resubmitted() -> None:
    c = core(max_queued=1)
    c.add_instance(instance("a"))
    c.submit(request("x"), 0.0, prompt_tokens=8)
    c.cancel("x", 0.1)
    c.submit(request("x"), 0.2, prompt_tokens=8)  # cancelled: the client retries it
    assert c.status("x") is S.QUEUED
    assert c.submit(request("y"), 0.3, prompt_tokens=8).status is S.REJECTED  # queue full
    c.next_dispatches(0.4)
    assert c.submit(request("y"), 0.5, prompt_tokens=8).status is S.QUEUED  # retried later
    assert c.counters().submitted == 4 and c.counters().cancelled == 1
    assert c.counters().rejected == 1
    identity(c)


def test_a_completed_id_is_refused_while_its_result_is_kept() -> None:
    c = core(history_size=2)
    c.add_instance(instance("a"))
    c.submit(request("x"), 0.0, prompt_tokens=8)
    c.next_dispatches(0.0)
    c.on_complete("x", 0.1, prompt_tokens=8, completion_tokens=3, finish_reason="stop")
    first = c.record("x")
    before = c.counters()
    with pytest.raises(DuplicateRequestId, match="'x' already completed") as refused:
        c.submit(request("x"), 0.2, prompt_tokens=8)
    assert isinstance(refused.value, ValueError) and not refused.value.live
    assert refused.value.status is S.COMPLETED and "last 2 finished" in str(refused.value)
    assert c.record("x") is first and c.counters() == before  # nothing replaced, nothing counted
    for rid in ("y", "z"):  # two more finish: x leaves the bounded history...
        c.submit(request(rid), 0.3, prompt_tokens=8)
        c.cancel(rid, 0.3)
    assert not c.knows("x")
    assert c.submit(request("x"), 0.4, prompt_tokens=8).status is S.QUEUED  # ...and is free
    identity(c)


def test_unknown_ids_raise_key_error_with_clear_message() -> None:
    c = core()
    c.add_instance(instance("a"))
    with pytest.raises(KeyError, match="unknown instance 'zz'; registered: a"):
        c.instance("zz")
    for call in (c.drain_instance, c.remove_instance, c.requests_on):
        with pytest.raises(KeyError, match="unknown instance"):
            call("zz")
    with pytest.raises(KeyError, match="unknown request"):
        c.status("nope")
    with pytest.raises(KeyError):
        c.cancel("nope", 0.0)
    with pytest.raises(KeyError):
        c.on_complete("nope", 0.0, prompt_tokens=1, completion_tokens=1, finish_reason="stop")
    with pytest.raises(ValueError, match="already registered"):
        c.add_instance(instance("a"))


def test_rejections_carry_reasons_and_are_counted() -> None:
    c = core()
    assert c.submit(request("none"), 0.0, prompt_tokens=8).reason == "no instances registered"
    c.add_instance(instance("tp1"))
    c.add_instance(instance("tp4", model="llama-3-70b", tensor_parallel_size=4, gpu_count=4))
    unknown = c.submit(request("u", model_name="gpt-9"), 0.0, prompt_tokens=8)
    assert unknown.status is S.REJECTED and "no instance serves model 'gpt-9'" in unknown.reason
    hint = request("h", model_name="llama-3-8b", parallelism_hint=ParallelismType.TP)
    rec = c.submit(hint, 0.0, prompt_tokens=8)
    assert (
        rec.status is S.REJECTED and "parallelism 'tp'" in rec.reason and "tp1(tp=1" in rec.reason
    )
    ok = c.submit(
        request("ok", model_name="llama-3-70b", parallelism_hint="tp"), 0.0, prompt_tokens=8
    )
    assert ok.status is S.QUEUED
    pp = c.submit(
        request("pp", model_name="llama-3-70b", parallelism_hint="pp"), 0, prompt_tokens=8
    )
    assert pp.status is S.REJECTED
    assert c.counters().rejected == 4 and c.metrics(0.0).rejected_requests == 4
    assert c.status("u") is S.REJECTED  # answered from history
    identity(c)


def test_default_model_is_the_first_registered() -> None:
    c = core()
    c.add_instance(instance("a", model="llama-3-70b", tensor_parallel_size=2, gpu_count=2))
    c.add_instance(instance("b", model="llama-3-8b"))
    rec = c.submit(request("r"), 0.0, prompt_tokens=8)
    assert rec.model_name == "llama-3-70b"
    assert c.next_dispatches(0.0)[0].instance_id == "a"


def test_illegal_feedback_raises_and_late_feedback_is_a_no_op() -> None:
    c = core()
    c.add_instance(instance("a"))
    c.submit(request("r"), 0.0, prompt_tokens=8)
    with pytest.raises(IllegalTransition):
        c.on_started("r", 0.0)  # still queued
    c.next_dispatches(0.0)
    c.cancel("r", 0.1)
    assert (
        c.on_complete("r", 0.2, prompt_tokens=8, completion_tokens=3, finish_reason="stop") is False
    )
    assert c.on_failed("r", 0.2, "boom", retryable=True) is False
    assert c.status("r") is S.CANCELLED
    identity(c)


def test_cancel_in_every_state() -> None:
    c = core()
    c.add_instance(instance("a", max_concurrent_requests=2))
    for rid in ("q", "s", "run"):
        c.submit(request(rid), 0.0, prompt_tokens=8)
    c.submit(request("hold"), 0.0, prompt_tokens=8)
    dispatched = [d.request_id for d in c.next_dispatches(0.0)]
    assert dispatched == ["q", "s"]
    c.on_started("s", 0.01)
    queued = c.cancel("hold", 0.02)
    assert queued.changed and queued.abort_instance_id is None and queued.status is S.CANCELLED
    scheduled = c.cancel("q", 0.02)
    assert scheduled.abort_instance_id == "a"
    running = c.cancel("s", 0.03)
    assert running.abort_instance_id == "a" and c.instance("a").active_requests == 0
    again = c.cancel("s", 0.04)
    assert not again.changed and again.status is S.CANCELLED and again.abort_instance_id is None
    c.next_dispatches(0.05)
    c.on_first_token("run", 0.1)
    c.on_complete("run", 0.2, prompt_tokens=8, completion_tokens=5, finish_reason="stop")
    done = c.cancel("run", 0.3)
    assert not done.changed and done.status is S.COMPLETED
    assert c.counters().cancelled == 3
    identity(c)


def test_no_head_of_line_blocking_across_models() -> None:
    c = core()
    c.add_instance(instance("big", model="llama-3-70b", tensor_parallel_size=4, gpu_count=4,
                            max_concurrent_requests=1))  # fmt: skip
    c.add_instance(instance("small", max_concurrent_requests=10))
    c.submit(request("b1", model_name="llama-3-70b"), 0.0, prompt_tokens=8)
    c.submit(request("b2", model_name="llama-3-70b"), 0.0, prompt_tokens=8)
    for k in range(5):
        c.submit(request(f"s{k}", model_name="llama-3-8b"), 0.0, prompt_tokens=8)
    ids = [d.request_id for d in c.next_dispatches(0.0)]
    assert ids == ["b1", "s0", "s1", "s2", "s3", "s4"]
    assert c.status("b2") is S.QUEUED


def test_a_request_only_excluded_instances_could_take_does_not_block_others() -> None:
    c = core(max_retries=3, retry_backoff_s=0.0)
    c.add_instance(instance("b", max_concurrent_requests=1))
    c.submit(request("busy"), 0.0, prompt_tokens=8)
    c.add_instance(instance("a", max_concurrent_requests=5))
    c.submit(request("r"), 0.0, prompt_tokens=8)
    placed = {d.request_id: d.instance_id for d in c.next_dispatches(0.0)}
    assert placed == {"busy": "b", "r": "a"}
    assert c.on_failed("r", 0.0, "boom", retryable=True)  # the only instance r may retry on is full
    for k in range(3):
        c.submit(request(f"x{k}"), 0.0, prompt_tokens=8)
    ids = [x.request_id for x in c.next_dispatches(0.0)]
    assert ids == ["x0", "x1", "x2"] and c.status("r") is S.QUEUED
    c.on_complete("busy", 0.1, prompt_tokens=8, completion_tokens=4, finish_reason="stop")
    retry = c.next_dispatches(0.1)
    assert [(d.request_id, d.instance_id, d.attempt) for d in retry] == [("r", "b", 2)]


def test_retry_goes_to_another_instance_and_is_bounded() -> None:
    c = core(max_retries=1, retry_backoff_s=0.5)
    fleet = VirtualFleet(c)
    fleet.add(instance("a"), instance("b"), instance("c"))
    fleet.failing = {"a", "b"}
    fleet.submit_at(0.0, request("r"))
    fleet.run()
    rec = c.record("r")
    assert [d.instance_id for d in fleet.dispatches] == ["a", "b"]
    assert [d.attempt for d in fleet.dispatches] == [1, 2]
    assert fleet.dispatches[1].decision.decided_at >= 0.5  # backoff respected
    assert rec.status is S.FAILED and "retries exhausted" in rec.reason and rec.retries == 1
    assert c.metrics(fleet.now).retries == 1 and c.instance("a").failed_requests == 1
    identity(c)


def test_retry_succeeds_elsewhere_and_no_retry_after_first_token() -> None:
    c = core(retry_backoff_s=0.0)
    fleet = VirtualFleet(c)
    fleet.add(instance("a"), instance("b"))
    fleet.failing = {"a"}
    fleet.submit_at(0.0, request("r"))
    fleet.run()
    assert c.status("r") is S.COMPLETED and c.record("r").instance_id == "b"
    c.submit(request("late"), fleet.now, prompt_tokens=8)
    c.next_dispatches(fleet.now)
    c.on_first_token("late", fleet.now + 0.01)
    assert c.on_failed("late", fleet.now + 0.02, "stream broke", retryable=True) is False
    assert "after its first token" in c.record("late").reason
    identity(c)


def test_bounded_queue_sheds_lowest_priority_first() -> None:
    c = core(max_queued=3)
    c.add_instance(instance("a", max_concurrent_requests=1))
    P = RequestPriority
    for rid, prio in (("n", P.NORMAL), ("bg", P.BACKGROUND), ("low", P.LOW)):
        c.submit(request(rid, priority=prio), 0.0, prompt_tokens=8)
    hi = c.submit(request("hi", priority=P.HIGH), 0.1, prompt_tokens=8)
    assert hi.status is S.QUEUED
    assert c.status("bg") is S.REJECTED and "shed" in c.record("bg").reason
    c.submit(request("hi2", priority=P.HIGH), 0.2, prompt_tokens=8)
    assert c.status("low") is S.REJECTED
    bg = c.submit(request("bg2", priority=P.BACKGROUND), 0.3, prompt_tokens=8)
    assert bg.status is S.REJECTED and "none of lower priority" in bg.reason
    assert c.counters().shed == 2 and c.counters().rejected == 3
    assert c.summary(0.3)["queue_depth_by_priority"]["high"] == 2
    identity(c)


def test_per_priority_cap() -> None:
    c = core(max_queued_per_priority={RequestPriority.BACKGROUND: 1})
    c.add_instance(instance("a"))
    c.submit(request("b1", priority="background"), 0.0, prompt_tokens=8)
    rec = c.submit(request("b2", priority="background"), 0.0, prompt_tokens=8)
    assert rec.status is S.REJECTED and "priority background" in rec.reason


def test_saturation_and_health_gate_dispatch() -> None:
    c = core(saturation_waiting=4)
    c.add_instance(instance("a"))
    c.submit(request("r"), 0.0, prompt_tokens=8)
    c.update_load("a", 10, 5, 0.5, 0.0)
    assert c.next_dispatches(0.0) == []
    c.update_load("a", 10, 0, 0.99, 0.1)
    assert c.next_dispatches(0.1) == []
    c.update_load("a", 10, 0, 0.5, 0.2)
    c.set_health("a", False, 0.2)
    assert c.next_dispatches(0.2) == [] and c.summary(0.2)["available_instances"] == 0
    c.set_health("a", True, 0.3)
    assert [d.request_id for d in c.next_dispatches(0.3)] == ["r"]


def test_drain_and_remove_keep_accounting_closed() -> None:
    c = core()
    c.add_instance(instance("a"))
    c.add_instance(instance("b"))
    c.submit(request("r1"), 0.0, prompt_tokens=8)
    (d,) = c.next_dispatches(0.0)
    assert c.drain_instance(d.instance_id) == ["r1"]
    c.submit(request("r2"), 0.0, prompt_tokens=8)
    (d2,) = c.next_dispatches(0.0)
    assert d2.instance_id != d.instance_id
    assert c.remove_instance(d.instance_id) == ["r1"]
    assert d.instance_id not in [i.instance_id for i in c.instances()]
    c.on_complete("r1", 1.0, prompt_tokens=8, completion_tokens=4, finish_reason="stop")
    assert c.record("r1").cost_usd > 0
    c.add_instance(instance(d.instance_id))  # the id is free again once its requests ended
    identity(c)


def test_removing_the_last_instance_of_a_model_rejects_its_queue() -> None:
    c = core()
    c.add_instance(instance("a", max_concurrent_requests=1))
    c.submit(request("r1"), 0.0, prompt_tokens=8)
    c.submit(request("r2"), 0.0, prompt_tokens=8)
    c.next_dispatches(0.0)
    assert c.remove_instance("a") == ["r1"]
    assert c.status("r2") is S.REJECTED and "any more" in c.record("r2").reason
    c.on_failed("r1", 0.5, "engine gone", retryable=True)
    assert c.status("r1") is S.FAILED
    identity(c)


def test_hard_deadline_expires_while_queued() -> None:
    c = core()
    c.add_instance(instance("a", max_concurrent_requests=1))
    c.submit(request("busy"), 0.0, prompt_tokens=8)
    c.next_dispatches(0.0)
    c.submit(request("soft", slo_deadline_ms=100), 0.0, prompt_tokens=8)
    c.submit(request("hard", slo_deadline_ms=100), 0.0, prompt_tokens=8, hard_deadline=True)
    assert c.next_wakeup() == pytest.approx(0.1)
    assert c.expire(0.05) == []
    assert c.expire(0.2) == ["hard"]
    assert c.status("hard") is S.TIMEOUT and c.status("soft") is S.QUEUED
    res = c.on_timeout("busy", 0.3)
    assert res.abort_instance_id == "a" and res.status is S.TIMEOUT
    m = c.metrics(0.3)
    assert m.timeout_requests == 2 and m.slo_violations == 1  # only "hard" carried an SLO
    identity(c)


def test_summary_and_live_switches() -> None:
    c = ControlCore("adaptive", "round_robin")
    c.add_instance(instance("a"))
    s = c.summary(0.0)
    for key in ("running_requests", "pending_requests", "available_instances",
                "scheduling_policy", "routing_strategy", "active_policy", "policy_reason",
                "queue_depth_by_priority"):  # fmt: skip
        assert key in s
    assert s["scheduling_policy"] == "adaptive" and s["active_policy"] == "priority"
    c.set_strategy("load_balanced")
    assert c.strategy_name == "load_balanced"


def test_set_policy_reorders_the_queue() -> None:
    c = core("fifo")
    c.add_instance(instance("a", max_concurrent_requests=1))
    c.submit(request("block"), 0.0, prompt_tokens=8)
    c.next_dispatches(0.0)
    c.submit(request("low", priority="low"), 0.1, prompt_tokens=8)
    c.submit(request("high", priority="high"), 0.2, prompt_tokens=8)
    c.set_policy("priority")
    c.on_complete("block", 1.0, prompt_tokens=8, completion_tokens=2, finish_reason="stop")
    assert [d.request_id for d in c.next_dispatches(1.0)] == ["high"]


def test_strategy_outside_candidates_is_a_loud_bug() -> None:
    from vllm_control_plane.core.interfaces import RouteChoice, RoutingStrategy

    class Rogue(RoutingStrategy):
        name = "rogue"

        def select(self, req, candidates):  # type: ignore[no-untyped-def]
            return RouteChoice("elsewhere", "rogue")

    c = ControlCore("fifo", Rogue())
    c.add_instance(instance("a"))
    c.submit(request("r"), 0.0, prompt_tokens=8)
    with pytest.raises(RuntimeError, match="not among its candidates"):
        c.next_dispatches(0.0)


def test_metrics_are_computed_from_what_happened() -> None:
    c = core()
    c.add_instance(instance("a", max_concurrent_requests=10))
    timings = {"r0": (0.1, 1.1, 11), "r1": (0.2, 2.2, 21), "r2": (0.3, 0.3, 1)}
    for rid in timings:
        prio = "high" if rid == "r0" else "low"
        c.submit(request(rid, priority=prio, slo_deadline_ms=1500), 0.0, prompt_tokens=10)
    c.next_dispatches(0.0)
    for rid, (first, done, n) in timings.items():
        c.on_first_token(rid, first)
        c.on_complete(rid, done, prompt_tokens=10, completion_tokens=n, finish_reason="stop")
    m = c.metrics(10.0)
    assert m.completed_requests == 3 and m.completion_tokens == 33 and m.prompt_tokens == 30
    assert m.avg_latency_ms == pytest.approx((1100 + 2200 + 300) / 3)
    assert m.p50_latency_ms == pytest.approx(1100) and m.p99_latency_ms <= 2200
    assert m.avg_ttft_ms == pytest.approx(200)
    assert m.p50_tpot_ms == pytest.approx(100)  # both have (E2E − TTFT)/(n − 1) = 100 ms
    assert m.requests_per_second == pytest.approx(3 / 10) and m.tokens_per_second == pytest.approx(
        3.3
    )
    assert m.slo_requests == 3 and m.slo_violations == 1  # r1 took 2.2 s > 1.5 s
    assert m.slo_compliance_by_priority == {"high": 1.0, "low": 0.5}
    assert m.total_cost > 0 and m.cost_per_token == pytest.approx(m.total_cost / 33)
    assert c.instance("a").avg_latency_ms > 0 and c.instance("a").total_requests == 3


def test_runtime_conveniences() -> None:
    c = core()
    c.add_instance(instance("a"))
    assert not c.knows("r")
    c.submit(request("r"), 1.0, prompt_tokens=8)
    assert c.knows("r") and c.is_live("r")
    c.next_dispatches(1.5)
    c.on_complete("r", 2.0, prompt_tokens=8, completion_tokens=4, finish_reason="stop")
    rec = c.record("r")
    assert c.knows("r") and not c.is_live("r")
    assert rec.queue_time_ms == pytest.approx(500) and rec.latency_ms == pytest.approx(1000)
    assert rec.slo_met is None
    c.submit(request("q"), 2.0, prompt_tokens=8)
    out = c.cancel("q", 2.1, reason="control plane stopped")
    assert out.cancelled and c.record("q").reason == "control plane stopped"

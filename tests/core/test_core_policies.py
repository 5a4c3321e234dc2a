"""Each scheduling policy's defining behaviour, in virtual time through ControlCore."""

from __future__ import annotations

from core_harness import FirstCandidate, ServiceModel, VirtualFleet, instance, request

from vllm_control_plane.core.core import ControlCore
from vllm_control_plane.core.limits import CoreLimits
from vllm_control_plane.core.policies import AdaptivePolicy, AdaptiveSettings
from vllm_control_plane.types import RequestPriority, RequestStatus

S = RequestStatus
P = RequestPriority


def test_priority_serves_high_before_low_under_contention() -> None:
    c = ControlCore("priority", FirstCandidate())
    fleet = VirtualFleet(c)
    fleet.add(instance("a", max_concurrent_requests=1))
    for k in range(10):
        prio = P.HIGH if k % 2 else P.LOW
        fleet.submit_at(0.0, request(f"{prio.name}-{k}", priority=prio))
    fleet.run()
    order = [d.request_id.split("-")[0] for d in fleet.dispatches]
    assert order == ["LOW"] + ["HIGH"] * 5 + ["LOW"] * 4  # the first LOW arrived to an idle fleet


def _low_behind_high_stream(aging_s: float) -> int:
    """Index of the LOW request among dispatches while HIGH requests keep arriving."""
    c = ControlCore("priority", FirstCandidate(), limits=CoreLimits(aging_s=aging_s))
    fleet = VirtualFleet(c)
    fleet.add(instance("a", max_concurrent_requests=1))
    fleet.submit_at(0.0, request("block", priority=P.CRITICAL, max_tokens=1))
    fleet.submit_at(0.0, request("low", priority=P.LOW))
    for k in range(60):  # a HIGH request every 0.1 s, each takes ~0.2 s: always a backlog
        fleet.submit_at(0.01 + 0.1 * k, request(f"h{k}", priority=P.HIGH))
    fleet.run()
    return [d.request_id for d in fleet.dispatches].index("low")


def test_aging_lets_low_run_before_the_high_stream_ends() -> None:
    starved = _low_behind_high_stream(aging_s=1e6)
    aged = _low_behind_high_stream(aging_s=1.0)
    assert starved == 61  # without aging: after every HIGH request
    # LOW (key 3·1 + 0) passes every HIGH that arrived after t = 2 s (key 1·1 + t): 20 of them.
    assert aged == 1 + 20


def _deadline_mix(policy: str) -> float:
    """Burst of loose requests then tight ones on a small fleet; returns SLO attainment."""
    c = ControlCore(policy, "round_robin")
    fleet = VirtualFleet(c, ServiceModel(ttft_s=0.05, tpot_s=0.01, crowding=0.0))
    fleet.add(instance("a", max_concurrent_requests=2), instance("b", max_concurrent_requests=2))
    for k in range(40):
        t = 0.02 * k
        fleet.submit_at(t, request(f"loose{k}", slo_deadline_ms=20_000))
        fleet.submit_at(t + 0.001, request(f"tight{k}", slo_deadline_ms=1_200))
    fleet.run()
    m = c.metrics(fleet.now)
    assert m.completed_requests == 80 and c.counters().identity_holds()
    return m.slo_compliance_rate


def test_slo_aware_meets_more_deadlines_than_fifo() -> None:
    fifo, slo = _deadline_mix("fifo"), _deadline_mix("slo_aware")
    assert slo > fifo + 0.2, (fifo, slo)
    assert slo >= 0.9


def test_slo_aware_demotes_late_requests_and_times_out_hard_ones() -> None:
    c = ControlCore("slo_aware", FirstCandidate())
    c.add_instance(instance("a", max_concurrent_requests=1))
    c.submit(request("block"), 0.0, prompt_tokens=8)
    c.next_dispatches(0.0)
    c.submit(request("soft", slo_deadline_ms=200, max_tokens=16), 0.0, prompt_tokens=8)
    c.submit(request("hard", slo_deadline_ms=200, max_tokens=16), 0.0, prompt_tokens=8,
             hard_deadline=True)  # fmt: skip
    c.submit(request("ok", slo_deadline_ms=60_000), 0.0, prompt_tokens=8)
    c.on_complete("block", 0.15, prompt_tokens=8, completion_tokens=16, finish_reason="length")
    (d,) = c.next_dispatches(0.15)  # both 200 ms requests can no longer make it
    assert d.request_id == "ok"
    assert c.status("hard") is S.TIMEOUT and "cannot meet its deadline" in c.record("hard").reason
    assert c.record("soft").demoted and c.status("soft") is S.QUEUED
    c.on_complete("ok", 0.3, prompt_tokens=8, completion_tokens=16, finish_reason="length")
    assert [x.request_id for x in c.next_dispatches(0.3)] == ["soft"]  # late, best effort


def test_slo_aware_rejects_impossible_hard_deadline_at_admission() -> None:
    c = ControlCore("slo_aware", FirstCandidate())
    c.add_instance(instance("a"))
    rec = c.submit(request("r", slo_deadline_ms=5, max_tokens=500), 0.0, prompt_tokens=8,
                   hard_deadline=True)  # fmt: skip
    assert rec.status is S.REJECTED and "SLO impossible" in rec.reason


def _priced_fleet(c: ControlCore) -> None:
    c.add_instance(instance("cheap", gpu_type="A100-80G", cost_per_gpu_hour=0.5))
    c.add_instance(instance("fast", gpu_type="H100", cost_per_gpu_hour=4.0))


def test_cost_optimized_prefers_cheap_when_the_slo_allows() -> None:
    c = ControlCore("cost_optimized", "round_robin")
    _priced_fleet(c)
    loose = c.submit(
        request("loose", slo_deadline_ms=10_000, max_tokens=200), 0.0, prompt_tokens=64
    )
    tight = c.submit(request("tight", slo_deadline_ms=1_900, max_tokens=200), 0.0, prompt_tokens=64)
    none = c.submit(request("none", max_tokens=200), 0.0, prompt_tokens=64)
    placed = {d.request_id: d.instance_id for d in c.next_dispatches(0.0)}
    assert placed == {"loose": "cheap", "tight": "fast", "none": "cheap"}
    assert "cheapest band" in c.record("loose").decision.reason
    assert loose.decision.estimated_cost < tight.decision.estimated_cost
    assert none.status is S.SCHEDULED


def test_cost_optimized_waits_for_the_cheap_instance_without_slo() -> None:
    c = ControlCore("cost_optimized", "round_robin")
    c.add_instance(instance("cheap", gpu_type="A100-80G", cost_per_gpu_hour=0.5,
                            max_concurrent_requests=1))  # fmt: skip
    c.add_instance(instance("fast", gpu_type="H100", cost_per_gpu_hour=4.0))
    c.submit(request("a", max_tokens=200), 0.0, prompt_tokens=64)
    c.submit(request("b", max_tokens=200), 0.0, prompt_tokens=64)
    c.submit(request("c", max_tokens=200, slo_deadline_ms=60_000), 0.0, prompt_tokens=64)
    placed = {d.request_id: d.instance_id for d in c.next_dispatches(0.0)}
    assert placed == {"a": "cheap", "c": "fast"}  # c spills over: it has an SLO to keep
    assert c.status("b") is S.QUEUED


def test_cost_budget_is_enforced_with_a_reason() -> None:
    for policy in ("cost_optimized", "fifo"):
        c = ControlCore(policy, "round_robin")
        _priced_fleet(c)
        rec = c.submit(request("r", cost_budget=1e-7, max_tokens=500), 0.0, prompt_tokens=64)
        assert rec.status is S.REJECTED
        assert "over cost budget on every eligible instance" in rec.reason and "$" in rec.reason
        ok = c.submit(request("ok", cost_budget=0.05, max_tokens=500), 0.0, prompt_tokens=64)
        assert ok.status is S.QUEUED


def test_budget_restricts_placement_to_instances_within_it() -> None:
    c = ControlCore("fifo", FirstCandidate())
    c.add_instance(instance("dear", gpu_type="H100", cost_per_gpu_hour=40.0))
    c.add_instance(instance("cheap", gpu_type="H100", cost_per_gpu_hour=1.0))
    c.submit(request("r", cost_budget=0.002, max_tokens=200), 0.0, prompt_tokens=64)
    assert c.next_dispatches(0.0)[0].instance_id == "cheap"


def _adaptive_core(settings: AdaptiveSettings) -> tuple[ControlCore, AdaptivePolicy]:
    c = ControlCore("adaptive", FirstCandidate())
    c.add_instance(instance("a", max_concurrent_requests=1000))
    policy = c.policy
    assert isinstance(policy, AdaptivePolicy)
    policy.configure(settings)
    return c, policy


def _outcomes(c: ControlCore, n: int, *, met: bool, t0: float) -> float:
    """n requests with a 100 ms SLO finishing in 50 ms (met) or 500 ms (missed)."""
    t = t0
    for _ in range(n):
        rid = request(slo_deadline_ms=100).request_id
        c.submit(request(rid, slo_deadline_ms=100), t, prompt_tokens=8)
        c.next_dispatches(t)
        t += 0.05 if met else 0.5
        c.on_first_token(rid, t - 0.01)
        c.on_complete(rid, t, prompt_tokens=8, completion_tokens=16, finish_reason="length")
    return t


def test_adaptive_switches_on_attainment_and_back_with_hysteresis() -> None:
    settings = AdaptiveSettings(window=40, min_samples=10, dwell=10)
    c, policy = _adaptive_core(settings)
    t = _outcomes(c, 20, met=True, t0=0.0)
    assert policy.active.name == "priority"
    t = _outcomes(c, 20, met=False, t0=t)
    assert policy.active.name == "slo_aware" and "attainment" in policy.why
    summary = c.summary(t)
    assert summary["active_policy"] == "slo_aware" and "attainment" in summary["policy_reason"]
    t = _outcomes(c, 30, met=True, t0=t)  # window: 10 missed of 40 → 75 %: stays (hysteresis)
    assert policy.active.name == "slo_aware"
    t = _outcomes(c, 10, met=True, t0=t)  # window all met → back
    assert policy.active.name == "priority" and policy.switches == 2


def test_adaptive_dwell_prevents_flapping() -> None:
    c, policy = _adaptive_core(AdaptiveSettings(window=20, min_samples=5, dwell=15))
    t = _outcomes(c, 10, met=False, t0=0.0)
    assert policy.active.name == "priority"  # dwell not reached yet
    _outcomes(c, 5, met=False, t0=t)
    assert policy.active.name == "slo_aware"


def test_adaptive_picks_cost_optimized_on_a_quiet_fleet_with_price_spread() -> None:
    c = ControlCore("adaptive", FirstCandidate())
    _priced_fleet(c)
    policy = c.policy
    assert isinstance(policy, AdaptivePolicy)
    policy.configure(AdaptiveSettings(window=20, min_samples=5, dwell=5))
    t = 0.0
    for k in range(6):
        c.submit(request(f"r{k}", max_tokens=4), t, prompt_tokens=8)
        c.next_dispatches(t)
        c.on_complete(f"r{k}", t + 0.1, prompt_tokens=8, completion_tokens=4, finish_reason="stop")
        t += 0.2
    assert policy.active.name == "cost_optimized" and "prices differ" in policy.why
    assert c.summary(t)["active_policy"] == "cost_optimized"


def test_parked_request_wakes_when_its_instance_frees_a_slot() -> None:
    c = ControlCore("cost_optimized", "round_robin")
    c.add_instance(instance("cheap", gpu_type="A100-80G", cost_per_gpu_hour=0.5,
                            max_concurrent_requests=1))  # fmt: skip
    c.add_instance(instance("fast", gpu_type="H100", cost_per_gpu_hour=4.0))
    c.submit(request("a", max_tokens=200), 0.0, prompt_tokens=64)
    c.submit(request("b", max_tokens=200), 0.0, prompt_tokens=64)
    assert [d.request_id for d in c.next_dispatches(0.0)] == ["a"]
    assert c.next_dispatches(0.1) == [] and c.summary(0.1)["pending_requests"] == 1
    c.on_complete("a", 1.0, prompt_tokens=64, completion_tokens=200, finish_reason="length")
    assert [(d.request_id, d.instance_id) for d in c.next_dispatches(1.0)] == [("b", "cheap")]


def test_parked_requests_can_be_cancelled_and_survive_a_policy_switch() -> None:
    c = ControlCore("cost_optimized", "round_robin")
    c.add_instance(instance("cheap", gpu_type="A100-80G", cost_per_gpu_hour=0.5,
                            max_concurrent_requests=1))  # fmt: skip
    c.add_instance(instance("fast", gpu_type="H100", cost_per_gpu_hour=4.0))
    for rid in ("a", "b", "c"):
        c.submit(request(rid, max_tokens=200), 0.0, prompt_tokens=64)
    c.next_dispatches(0.0)  # a runs on cheap; b and c are parked waiting for it
    assert c.cancel("b", 0.1).changed
    c.set_policy("fifo")  # fifo places anywhere with room: c goes to the fast instance
    assert [(d.request_id, d.instance_id) for d in c.next_dispatches(0.2)] == [("c", "fast")]
    assert c.counters().identity_holds()


def test_slo_aware_waits_for_the_only_instance_fast_enough() -> None:
    c = ControlCore("slo_aware", "round_robin")
    c.add_instance(instance("fast", gpu_type="H100", max_concurrent_requests=1))
    c.add_instance(instance("slow", gpu_type="L4"))
    c.submit(request("x", max_tokens=100), 0.0, prompt_tokens=32)
    c.submit(request("y", slo_deadline_ms=3_000, max_tokens=100), 0.0, prompt_tokens=32)
    c.submit(request("z", max_tokens=100), 0.0, prompt_tokens=32)
    first = {d.request_id: d.instance_id for d in c.next_dispatches(0.0)}
    assert first["y"] == "fast" and set(first) == {"x", "y", "z"}
    c.submit(request("w", slo_deadline_ms=3_000, max_tokens=100), 0.0, prompt_tokens=32)
    assert c.next_dispatches(0.0) == []  # the L4 cannot make 3 s; wait for the H100
    c.on_complete("y", 0.9, prompt_tokens=32, completion_tokens=100, finish_reason="length")
    assert [(d.request_id, d.instance_id) for d in c.next_dispatches(0.9)] == [("w", "fast")]


def test_every_freed_slot_wakes_a_parked_request() -> None:
    c = ControlCore("cost_optimized", "round_robin")
    c.add_instance(instance("cheap", gpu_type="A100-80G", cost_per_gpu_hour=0.5,
                            max_concurrent_requests=2))  # fmt: skip
    c.add_instance(instance("fast", gpu_type="H100", cost_per_gpu_hour=4.0))
    for rid in ("a1", "a2", "b1", "b2"):
        c.submit(request(rid, max_tokens=200), 0.0, prompt_tokens=64)
    assert [d.request_id for d in c.next_dispatches(0.0)] == ["a1", "a2"]
    for rid in ("a1", "a2"):  # two slots free before the driver asks again
        c.on_complete(rid, 1.0, prompt_tokens=64, completion_tokens=200, finish_reason="length")
    assert [d.request_id for d in c.next_dispatches(1.0)] == ["b1", "b2"]

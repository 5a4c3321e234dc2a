"""Every registered policy runs the same scenario; every request ends in exactly one state.

Adding a policy to ``POLICIES`` enrols it here. The scenario mixes priorities, SLOs, budgets,
parallelism hints, two models, a failing instance, cancellations and hard deadlines.
"""

from __future__ import annotations

import random

import pytest
from core_harness import VirtualFleet, instance, request

from vllm_control_plane.core.core import ControlCore
from vllm_control_plane.core.limits import CoreLimits
from vllm_control_plane.core.policies import POLICIES
from vllm_control_plane.types import TERMINAL_STATUSES, RequestPriority, RequestStatus


def _scenario(policy: str, strategy: str) -> tuple[ControlCore, VirtualFleet, list[str]]:
    rng = random.Random(7)
    c = ControlCore(policy, strategy, limits=CoreLimits(max_queued=150, retry_backoff_s=0.01))
    fleet = VirtualFleet(c)
    fleet.add(
        instance("h1", max_concurrent_requests=4),
        instance("h2", gpu_type="A100-80G", cost_per_gpu_hour=0.9, max_concurrent_requests=4),
        instance("bad", max_concurrent_requests=2),
        instance("big", model="llama-3-70b", tensor_parallel_size=4, gpu_count=4,
                 max_concurrent_requests=3),
    )  # fmt: skip
    fleet.failing = {"bad"}
    ids = []
    for k in range(200):
        kw: dict[str, object] = {"priority": rng.choice(list(RequestPriority))}
        if rng.random() < 0.4:
            kw["slo_deadline_ms"] = rng.choice([300, 2_000, 10_000])
        if rng.random() < 0.1:
            kw["cost_budget"] = rng.choice([1e-7, 0.01])
        if rng.random() < 0.2:
            kw["model_name"] = "llama-3-70b"
            kw["parallelism_hint"] = rng.choice(["tp", "pp", None])
        if rng.random() < 0.05:
            kw["model_name"] = "unknown-model"
        req = request(f"c{k}", **kw)
        ids.append(req.request_id)
        fleet.submit_at(0.01 * k, req)
    fleet.run(until=0.5)
    for rid in ids[:50:7]:  # submitted by now: some queued, some running, some finished
        c.cancel(rid, fleet.now)
    c.submit(request("hard", slo_deadline_ms=50), fleet.now, prompt_tokens=8, hard_deadline=True)
    ids.append("hard")
    fleet.run()
    return c, fleet, ids


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_every_request_reaches_exactly_one_terminal_state(policy: str) -> None:
    c, fleet, ids = _scenario(policy, "load_balanced")
    statuses = [c.status(rid) for rid in ids]
    assert all(s in TERMINAL_STATUSES for s in statuses), {s for s in statuses}
    counters = c.counters()
    assert counters.in_flight == 0 and counters.identity_holds()
    assert counters.submitted == len(ids)
    by_status = {s: statuses.count(s) for s in TERMINAL_STATUSES}
    assert by_status[RequestStatus.COMPLETED] == counters.completed
    assert by_status[RequestStatus.REJECTED] == counters.rejected
    assert by_status[RequestStatus.CANCELLED] == counters.cancelled
    assert counters.completed > 100
    for inst in c.instances():
        assert inst.active_requests == 0
    m = c.metrics(fleet.now)
    assert m.total_requests == len(ids) and m.in_flight_requests == 0
    assert 0.0 <= m.slo_compliance_rate <= 1.0 and m.total_cost > 0
    for rid in ids:
        rec = c.record(rid)
        assert rec.reason, rid  # every ending carries a reason
        if rec.status is RequestStatus.COMPLETED:
            assert rec.instance_id != "bad"


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_retried_requests_never_return_to_the_instance_that_failed_them(policy: str) -> None:
    _, fleet, _ = _scenario(policy, "round_robin")
    seen: dict[str, list[str]] = {}
    for d in fleet.dispatches:
        seen.setdefault(d.request_id, []).append(d.instance_id)
    assert any(len(v) > 1 for v in seen.values())
    for places in seen.values():
        assert len(places) == len(set(places))

"""The virtual-time runner: deterministic, honest accounting, baselines vs the project's queue."""

from __future__ import annotations

from dataclasses import replace

import pytest

from vllm_control_plane.bench.report import run_table, summarize
from vllm_control_plane.bench.runner_virtual import run_virtual
from vllm_control_plane.bench.setup import (
    BenchConfig,
    FleetSpec,
    InstanceGroup,
    baseline,
    project_best,
)
from vllm_control_plane.bench.workloads import (
    ChatSpec,
    ChatWorkload,
    LengthDist,
    RequestClass,
    SyntheticSpec,
    SyntheticWorkload,
)
from vllm_control_plane.types import RequestPriority

FLEET = FleetSpec((InstanceGroup("a100", 2, gpu="A100-80G"),))
CLASSES = (
    RequestClass("hi", 1, RequestPriority.HIGH, ttft_slo_ms=1000, tpot_slo_ms=100),
    RequestClass("lo", 1, RequestPriority.LOW, ttft_slo_ms=20_000, tpot_slo_ms=200),
)


def workload(rate: float = 8.0) -> SyntheticWorkload:
    spec = SyntheticSpec(
        rate=rate,
        classes=CLASSES,
        prompt=LengthDist(600, 1.0, 16, 3000),
        output=LengthDist(120, 1.0, 4, 600),
    )
    return SyntheticWorkload(spec, seed=7)


def test_same_seed_same_numbers() -> None:
    reqs = workload(rate=12).requests(10)
    a = run_virtual(FLEET, project_best(), reqs, seed=3)
    b = run_virtual(FLEET, project_best(), reqs, seed=3)
    assert a.outcomes == b.outcomes
    sa, sb = summarize(a), summarize(b)
    sa.pop("wall_s"), sb.pop("wall_s")
    assert sa == sb


def test_seeded_random_baseline_is_reproducible() -> None:
    reqs = workload(rate=12).requests(6)
    a = run_virtual(FLEET, baseline("random"), reqs, seed=11)
    b = run_virtual(FLEET, baseline("random"), reqs, seed=11)
    assert a.outcomes == b.outcomes
    sa, sb = summarize(a), summarize(b)
    sa.pop("wall_s"), sb.pop("wall_s")
    assert sa == sb
    other = run_virtual(FLEET, baseline("random"), reqs, seed=12)
    assert [o.instance for o in other.outcomes] != [o.instance for o in a.outcomes]


def test_attainment_per_tenant_in_virtual_time() -> None:
    classes = (
        RequestClass("a", 1, ttft_slo_ms=1000, tpot_slo_ms=100, tenant="acme"),
        RequestClass("b", 1, ttft_slo_ms=1000, tpot_slo_ms=100, tenant="globex"),
    )
    spec = SyntheticSpec(rate=6, classes=classes, prompt=LengthDist(300, 0.5, 16, 1000))
    r = run_virtual(FLEET, project_best(), SyntheticWorkload(spec, seed=1).requests(5))
    assert {o.tenant for o in r.outcomes} == {"acme", "globex"}
    s = summarize(r)
    assert set(s["attainment_by_tenant"]) == {"acme", "globex"}
    assert "SLO met per tenant" in run_table([s])


def test_every_request_ends_and_counters_add_up() -> None:
    reqs = workload().requests(12)
    for cfg in (baseline("round_robin"), baseline("llmd_default"), project_best()):
        r = run_virtual(FLEET, cfg, reqs)
        assert len(r.outcomes) == len(reqs)
        assert all(o.status == "completed" for o in r.outcomes)
        c = r.counters
        assert c["submitted"] == len(reqs) == c["completed"] and c["in_flight"] == 0
        done = r.outcomes
        assert all(o.ttft is not None and o.e2e is not None and o.e2e >= o.ttft for o in done)
        assert r.engines.generation_tokens == sum(o.output_tokens for o in done)
        assert r.itl.total > 0 and r.load is not None and len(r.load.times) >= 24


def test_baselines_forward_at_once_the_project_queues_under_overload() -> None:
    one = FleetSpec((InstanceGroup("a100", 1, gpu="A100-80G"),))
    reqs = workload(rate=20).requests(8)
    base = run_virtual(one, baseline("least_request"), reqs)
    assert max(o.queue for o in base.outcomes) == 0.0  # nothing ever waits in our queue
    capped = replace(project_best(), concurrency_per_capacity=16)
    proj = run_virtual(one, capped, reqs)
    assert max(o.queue for o in proj.outcomes) > 1.0  # held in the control plane's queue
    hi = [o.queue for o in proj.outcomes if o.cls == "hi"]
    lo = [o.queue for o in proj.outcomes if o.cls == "lo"]
    assert sum(hi) / len(hi) < sum(lo) / len(lo)  # slo_aware serves the tight class first


def test_fail_fast_stops_a_failing_run() -> None:
    reqs = workload(rate=60).requests(20)
    r = run_virtual(FLEET, baseline("round_robin"), reqs, max_misses=10)
    assert r.aborted
    assert len(r.outcomes) == len(reqs)  # the rest count as unfinished misses
    assert summarize(r)["slo_attainment"] < 0.9


def test_heterogeneous_fleet_and_concurrency_cap() -> None:
    fleet = FleetSpec((InstanceGroup("h100", 1, tp=2), InstanceGroup("l4", 1, gpu="L4")))
    cfg = BenchConfig("capped", "fifo", "least_connections", concurrency_per_capacity=2)
    r = run_virtual(fleet, cfg, workload(rate=6).requests(15))
    caps = {o.instance for o in r.outcomes}
    assert caps == {"h100-0", "l4-0"}
    assert r.fleet_usd_per_hour == pytest.approx(2 * 3.00 + 0.80)


def test_chat_prefix_reuse_shows_in_engine_hit_rate() -> None:
    spec = ChatSpec(
        session_rate=1.0,
        mean_turns=4,
        think_s=4,
        system_prompts=2,
        system_tokens=512,
        classes=(CLASSES[0],),
    )
    reqs = ChatWorkload(spec, seed=2).requests(30)
    sticky = run_virtual(FLEET, baseline("prodstack_session"), reqs)
    hit = summarize(sticky)["prefix_hit_rate"]
    assert hit is not None and hit > 0.5
    sessions: dict[str, set[str]] = {}
    for o, req in zip(sticky.outcomes, sorted(reqs, key=lambda r: r.arrival), strict=True):
        sessions.setdefault(req.session_id, set()).add(o.instance)
    assert all(len(v) == 1 for v in sessions.values())  # production-stack session affinity


def test_baselines_show_their_defining_behaviour_in_a_run() -> None:
    spec = ChatSpec(
        session_rate=2.0,
        mean_turns=4,
        think_s=3,
        system_prompts=3,
        system_tokens=768,
        classes=(CLASSES[1],),
    )
    reqs = ChatWorkload(spec, seed=4).requests(12)
    fleet = FleetSpec((InstanceGroup("a100", 4, gpu="A100-80G"),))
    hits = {}
    for name in ("round_robin", "prodstack_prefixaware", "sglang_cache_aware", "llmd_default"):
        r = run_virtual(fleet, baseline(name), reqs)
        hits[name] = summarize(r)["prefix_hit_rate"]
        if name == "round_robin":  # strict rotation: counts differ by at most one
            counts = [sum(o.instance == f"a100-{k}" for o in r.outcomes) for k in range(4)]
            assert max(counts) - min(counts) <= 1
    for name in ("prodstack_prefixaware", "sglang_cache_aware", "llmd_default"):
        assert hits[name] > hits["round_robin"], hits  # prefix-aware routers find the caches

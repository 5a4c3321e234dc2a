"""Goodput search on a known threshold, and the report's definitions."""

from __future__ import annotations

import pytest

from vllm_control_plane.bench.goodput import search
from vllm_control_plane.bench.report import (
    attainment,
    load_imbalance,
    percentiles,
    run_table,
    summarize,
)
from vllm_control_plane.bench.results import Histogram, LoadSeries, Outcome, RunResult


def fake_run(m: float, knee: float, n: int = 100, aborted: bool = False) -> RunResult:
    """n requests at rate 10·m; all meet their SLO below the knee, fewer and fewer above."""
    met = n if m <= knee else int(n * knee / m * 0.8)
    outs = [
        Outcome(
            f"r{i}",
            "c",
            "normal",
            i / (10 * m),
            "completed",
            True,
            i < met,
            100,
            10,
            ttft=0.1,
            e2e=1.0,
            tpot=0.01,
        )
        for i in range(n)
    ]
    return RunResult("s", "c", "fifo", "rr", "virtual", 0, m, 10 * m, 10.0, outs, aborted=aborted)


def test_search_brackets_then_bisects_to_the_knee() -> None:
    calls: list[tuple[float, bool]] = []

    def run_at(m: float, fail_fast: bool) -> RunResult:
        calls.append((m, fail_fast))
        return fake_run(m, knee=2.7)

    g = search(run_at, start=1.0, tolerance=0.02, max_runs=20)
    assert g.bracketed and g.multiplier is not None
    assert 2.7 / 1.02 <= g.multiplier <= 2.7
    assert g.rate == pytest.approx(10 * g.multiplier)
    assert g.rejection_rate == 0.0
    assert all(ff for _, ff in calls)  # fail fast is asked for by default
    assert [p.passed for p in g.probes[:3]] == [True, True, False]  # 1, 2, 4


def test_search_goes_down_when_the_start_fails_and_respects_the_budget() -> None:
    g = search(lambda m, ff: fake_run(m, knee=0.3), start=1.0, max_runs=4)
    assert len(g.probes) == 4
    assert g.multiplier is not None and g.multiplier <= 0.3
    none = search(lambda m, ff: fake_run(m, knee=0.0), start=1.0, max_runs=3)
    assert none.rate is None and not none.bracketed


def test_an_aborted_run_never_passes() -> None:
    g = search(lambda m, ff: fake_run(m, knee=10, aborted=m > 2), start=1.0, max_runs=8)
    assert g.multiplier is not None and g.multiplier <= 2


def test_attainment_counts_refusals_as_misses_and_ignores_requests_without_slo() -> None:
    outs = [
        Outcome("a", "c", "high", 0, "completed", True, True, 10),
        Outcome("b", "c", "high", 0, "rejected", True, False, 10),
        Outcome("c", "c", "low", 0, "completed", False, None, 10),
    ]
    assert attainment(outs) == 0.5
    run = RunResult("s", "c", "p", "s", "virtual", 0, 1, 1, 1, outs)
    s = summarize(run)
    assert s["rejection_rate"] == pytest.approx(1 / 3)
    assert s["attainment_by_priority"] == {"high": 0.5, "low": None}


def test_percentiles_histogram_and_imbalance() -> None:
    p = percentiles([0.001 * i for i in range(1, 101)])
    assert p["p50"] == pytest.approx(50.5) and p["p99"] == pytest.approx(99.01)
    assert percentiles([])["p90"] is None
    h = Histogram()
    for v in (0.010, 0.020, 0.030):
        h.add(v, 100)
    assert h.quantile(0.5) == pytest.approx(0.020, rel=0.01)
    assert h.quantile(0.99) == pytest.approx(0.030, rel=0.01)
    even = LoadSeries(["a", "b"], [1.0, 2.0], [0, 1], [[2, 4], [0, 0]], [[0, 0], [0, 0]])
    assert load_imbalance(even) == pytest.approx(1.0)  # equal load per unit of capacity
    skew = LoadSeries(["a", "b"], [1.0, 1.0], [0], [[6, 2]], [[0, 0]])
    assert load_imbalance(skew) == pytest.approx(1.5)


def outcome(cls: str, priority: str, met: bool, tenant: str | None = None) -> Outcome:
    return Outcome("r", cls, priority, 0, "completed", True, met, 10, tenant=tenant)


def test_markdown_shows_attainment_per_priority_class_and_tenant() -> None:
    # classes map one-to-one onto priorities: one table, headed by both
    outs = [outcome("batch", "low", False), outcome("interactive", "high", True)]
    s = summarize(RunResult("s", "cfg", "p", "s", "virtual", 0, 1, 1, 1, outs))
    md = run_table([s])
    assert "SLO met per priority:\n\n| config | high (interactive) | low (batch) |" in md
    assert "| cfg | 100.0% | 0.0% |" in md
    assert "per class" not in md and "per tenant" not in md
    # two classes share a priority: a class table too; tenants: a tenant table
    outs = [
        outcome("chat", "critical", True, "t1"),
        outcome("chat", "critical", False, "t2"),
        outcome("bulk", "low", True, "t2"),
        outcome("scan", "low", False),
    ]
    s = summarize(RunResult("s", "cfg", "p", "s", "virtual", 0, 1, 1, 1, outs))
    assert s["attainment_by_tenant"] == {"t1": 1.0, "t2": 0.5}
    md = run_table([s, s])
    assert "| config | critical | low |" in md  # most urgent first
    assert "SLO met per class:\n\n| config | bulk | chat | scan |" in md
    assert "SLO met per tenant:\n\n| config | t1 | t2 |" in md
    assert md.count("| cfg | 100.0% | 50.0% |") == 4  # tenant table, and per priority (x2)
    single = summarize(RunResult("s", "c", "p", "s", "virtual", 0, 1, 1, 1, outs[3:]))
    assert run_table([single]).count("|---|") == 1  # nothing to break down

"""Figures from a run, and the markdown / JSON that carry them.

Definitions (DESIGN §7):

* TTFT = arrival → first token; TPOT = (E2E − TTFT)/(output − 1); E2E = arrival → last token;
  ITL = gaps between tokens (virtual runs: the token-weighted distribution of the engines'
  decode beat durations; live runs: gaps between streamed chunks). Percentiles over completed
  requests; means too.
* SLO attainment = share of requests that carried an SLO and met every SLO they carried;
  rejected, shed, timed-out, failed and unfinished requests that carried one count as misses.
  Overall, per priority and per request class.
* Rejection rate = (rejected + shed + timed out) / submitted: a configuration must not look
  good by refusing work, so it stands beside every attainment and goodput figure.
* Prefix cache hit rate = prompt tokens served from the engines' prefix caches / prompt tokens
  looked up (engine counters, like ``vllm:prefix_cache_hits_total / queries_total``).
* Load imbalance = time-average over scrapes of max / mean of the instances' outstanding
  requests (running + waiting) per unit of capacity; 1.0 is perfectly even.
* Cost = the fleet's price per hour × the run's makespan, per 1,000 completed requests; and per
  1,000 requests that met their SLO (what a good answer costs). Unknown (``–``) when the run
  has no price (a live run without ``--usd-per-hour``).

The markdown of a run (:func:`run_table`) is one row per configuration, followed by SLO
attainment per priority, per request class (when classes do not simply map one-to-one onto
priorities) and per tenant (when requests carry tenants).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from vllm_control_plane.bench.results import LoadSeries, Outcome, RunResult
from vllm_control_plane.types import RequestPriority

PERCENTILES = (50, 90, 99)


def percentiles(values: Sequence[float], scale: float = 1e3) -> dict[str, float | None]:
    """p50/p90/p99 and mean of ``values`` (seconds) in ms; None when there are none."""
    if not values:
        return {f"p{p}": None for p in PERCENTILES} | {"mean": None}
    arr = np.asarray(values, dtype=float) * scale
    out: dict[str, float | None] = {
        f"p{p}": float(v) for p, v in zip(PERCENTILES, np.percentile(arr, PERCENTILES), strict=True)
    }
    out["mean"] = float(arr.mean())
    return out


def attainment(outcomes: Iterable[Outcome]) -> float | None:
    judged = [o.met_slo for o in outcomes if o.met_slo is not None]
    return sum(judged) / len(judged) if judged else None


def _grouped(outcomes: Sequence[Outcome], key: str) -> dict[str, float | None]:
    groups: dict[str, list[Outcome]] = {}
    for o in outcomes:
        value = getattr(o, key)
        if value is not None:
            groups.setdefault(value, []).append(o)
    return {k: attainment(v) for k, v in sorted(groups.items())}


def load_imbalance(load: LoadSeries | None) -> float | None:
    if load is None or not load.outstanding:
        return None
    cap = np.asarray(load.capacity, dtype=float)
    x = np.asarray(load.outstanding, dtype=float) / cap
    mean = x.mean(axis=1)
    busy = mean > 0
    if not busy.any():
        return None
    return float((x[busy].max(axis=1) / mean[busy]).mean())


def summarize(result: RunResult) -> dict[str, object]:
    """Every figure of one run, as a flat-ish dict (ms for latencies)."""
    outs = result.outcomes
    done = [o for o in outs if o.status == "completed"]
    n = len(outs)
    refused = sum(1 for o in outs if o.status in ("rejected", "timeout"))
    met = sum(1 for o in outs if o.met_slo)
    span_h = max(result.end_s, 1e-9) / 3600
    priced = result.fleet_usd_per_hour > 0
    fleet_cost = result.fleet_usd_per_hour * span_h if priced else None
    tokens = sum(o.output_tokens for o in done)
    eng = result.engines
    return {
        "config": result.config,
        "policy": result.policy,
        "strategy": result.strategy,
        "multiplier": result.multiplier,
        "offered_rate": result.offered_rate,
        "requests": n,
        "completed": len(done),
        "rejected": sum(1 for o in outs if o.status == "rejected"),
        "timeout": sum(1 for o in outs if o.status == "timeout"),
        "failed": sum(1 for o in outs if o.status == "failed"),
        "unfinished": sum(1 for o in outs if o.status == "unfinished"),
        "rejection_rate": refused / n if n else 0.0,
        "slo_attainment": attainment(outs),
        "attainment_by_priority": _grouped(outs, "priority"),
        "attainment_by_class": _grouped(outs, "cls"),
        "attainment_by_tenant": _grouped(outs, "tenant"),
        "class_priority": {o.cls: o.priority for o in outs},
        "ttft_ms": percentiles([o.ttft for o in done if o.ttft is not None]),
        "tpot_ms": percentiles([o.tpot for o in done if o.tpot is not None]),
        "e2e_ms": percentiles([o.e2e for o in done if o.e2e is not None]),
        "itl_ms": _itl(result),
        "queue_ms": percentiles([o.queue for o in done if o.queue is not None]),
        "prefix_hit_rate": eng.prefix_hits / eng.prefix_queries if eng.prefix_queries else None,
        "preemptions": eng.preemptions,
        "load_imbalance": load_imbalance(result.load),
        "throughput_rps": len(done) / max(result.end_s, 1e-9),
        "output_tokens_per_s": tokens / max(result.end_s, 1e-9),
        "fleet_usd": fleet_cost,
        "usd_per_1k_completed": 1e3 * fleet_cost / len(done) if done and priced else None,
        "usd_per_1k_slo_met": 1e3 * fleet_cost / met if met and priced else None,
        "makespan_s": result.end_s,
        "wall_s": result.wall_s,
    }


def _itl(result: RunResult) -> dict[str, float | None]:
    h = result.itl
    out: dict[str, float | None] = {}
    for p in PERCENTILES:
        q = h.quantile(p / 100)
        out[f"p{p}"] = None if q is None else q * 1e3
    mean = h.mean()
    out["mean"] = None if mean is None else mean * 1e3
    return out


# ------------------------------------------------------------------------------ markdown ----
def fmt(value: object, digits: int = 0, pct: bool = False) -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and pct:
        return f"{100 * value:.1f}%"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |"]
    lines.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(headers))) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def run_table(summaries: Sequence[dict[str, object]]) -> str:
    """One row per run: attainment and rejections first, then latency percentiles; then the
    attainment breakdowns (:func:`breakdown_tables`)."""
    headers = [
        "config",
        "req/s",
        "SLO met",
        "rejected",
        "TTFT p50/p90/p99 ms",
        "TPOT p50/p90/p99 ms",
        "ITL p50/p99 ms",
        "E2E p50/p90/p99 ms",
        "prefix hit",
        "imbalance",
        "$/1k met",
    ]
    rows = []
    for s in summaries:
        rows.append(
            [
                str(s["config"]),
                fmt(s["offered_rate"], 2),
                fmt(s["slo_attainment"], pct=True),
                fmt(s["rejection_rate"], pct=True),
                _triple(s["ttft_ms"]),
                _triple(s["tpot_ms"], 1),
                _pair(s["itl_ms"]),
                _triple(s["e2e_ms"]),
                fmt(s["prefix_hit_rate"], pct=True),
                fmt(s["load_imbalance"], 2),
                fmt(s["usd_per_1k_slo_met"], 3),
            ]
        )
    return "\n\n".join([markdown_table(headers, rows), *breakdown_tables(summaries)])


_PRIORITY_ORDER = {p.name.lower(): p.value for p in RequestPriority}


def _group(summary: dict[str, object], key: str) -> dict[str, object]:
    value = summary.get(key)
    return value if isinstance(value, dict) else {}


def _class_of_priority(summaries: Sequence[dict[str, object]]) -> dict[str, str] | None:
    """priority → class when request classes and priorities split the requests the same way
    (one class per priority and vice versa), else None."""
    pairs = {(c, str(p)) for s in summaries for c, p in _group(s, "class_priority").items()}
    if len(pairs) == len({c for c, _ in pairs}) == len({p for _, p in pairs}):
        return {p: c for c, p in pairs}
    return None


def breakdown_tables(summaries: Sequence[dict[str, object]]) -> list[str]:
    """SLO attainment per priority (critical first), per class and per tenant, one row per
    run — each table only when it has something to show: two priorities or classes, or any
    tenant. When classes map one-to-one onto priorities, one table shows both (``high
    (interactive)``)."""
    same = _class_of_priority(summaries)
    groups = [("priority", "attainment_by_priority", 2)]
    if same is None:
        groups.append(("class", "attainment_by_class", 2))
    groups.append(("tenant", "attainment_by_tenant", 1))
    tables = []
    for label, key, minimum in groups:
        cols = {c for s in summaries for c in _group(s, key)}
        if len(cols) < minimum:
            continue
        order = sorted(cols, key=lambda c: (_PRIORITY_ORDER.get(c, 99), c))
        headers = list(order)
        if label == "priority" and same:
            headers = [c if same.get(c, c) == c else f"{c} ({same[c]})" for c in order]
        rows = [[str(s["config"])] + [fmt(_group(s, key).get(c), pct=True) for c in order]
                for s in summaries]  # fmt: skip
        tables.append(f"SLO met per {label}:\n\n" + markdown_table(["config", *headers], rows))
    return tables


def _triple(d: object, digits: int = 0) -> str:
    assert isinstance(d, dict)
    return " / ".join(fmt(d[f"p{p}"], digits) for p in PERCENTILES)


def _pair(d: object) -> str:
    assert isinstance(d, dict)
    return f"{fmt(d['p50'], 1)} / {fmt(d['p99'], 1)}"

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
  1,000 requests that met their SLO (what a good answer costs).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from vllm_control_plane.bench.results import LoadSeries, Outcome, RunResult

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
        groups.setdefault(getattr(o, key), []).append(o)
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
    fleet_cost = result.fleet_usd_per_hour * span_h
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
        "usd_per_1k_completed": 1e3 * fleet_cost / len(done) if done else None,
        "usd_per_1k_slo_met": 1e3 * fleet_cost / met if met else None,
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
    """One row per run: attainment and rejections first, then latency percentiles."""
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
    return markdown_table(headers, rows)


def _triple(d: object, digits: int = 0) -> str:
    assert isinstance(d, dict)
    return " / ".join(fmt(d[f"p{p}"], digits) for p in PERCENTILES)


def _pair(d: object) -> str:
    assert isinstance(d, dict)
    return f"{fmt(d['p50'], 1)} / {fmt(d['p99'], 1)}"

"""Goodput: the highest request rate at which ≥ 90 % of requests meet their SLOs.

How it works: ``search(run_at, ...)`` treats the workload's rate multiplier ``m`` as the knob
(:meth:`~vllm_control_plane.bench.workloads.Workload.requests` compresses the same request
stream ``m``×), and each probe is a full deterministic run. From a start point it doubles (or
halves) ``m`` until the target is bracketed — a passing ``lo`` and a failing ``hi`` — then
bisects geometrically until ``hi / lo ≤ 1 + tolerance`` or the run budget is spent. The answer
is the offered rate of the best *passing* run actually measured (never interpolated), reported
with the rejection rate of that run beside it.

Attainment is not guaranteed to be monotone in the rate (an adaptive policy can switch modes);
bisection then finds *a* threshold crossing, and every probe is kept so a plot shows the curve.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from vllm_control_plane.bench.report import attainment, summarize
from vllm_control_plane.bench.results import RunResult

TARGET = 0.90


@dataclass(frozen=True)
class Probe:
    multiplier: float
    rate: float  # offered requests/s
    attainment: float  # an upper bound when ``aborted``
    rejection_rate: float
    passed: bool
    wall_s: float
    aborted: bool = False  # stopped once more than 10 % had missed (fail fast)


@dataclass
class Goodput:
    rate: float | None  # req/s of the best passing probe; None: even the lowest probe failed
    multiplier: float | None
    rejection_rate: float | None  # at that probe
    probes: list[Probe] = field(default_factory=list)
    bracketed: bool = False  # a failing probe above the answer was found
    best_run: RunResult | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "rate": self.rate,
            "multiplier": self.multiplier,
            "rejection_rate": self.rejection_rate,
            "bracketed": self.bracketed,
            "probes": [asdict(p) for p in self.probes],
        }


def search(
    run_at: Callable[[float, bool], RunResult],
    *,
    start: float = 1.0,
    target: float = TARGET,
    tolerance: float = 0.05,
    max_runs: int = 10,
    lowest: float = 1 / 64,
    highest: float = 64.0,
    on_probe: Callable[[Probe], None] | None = None,
    fail_fast: bool = True,
) -> Goodput:
    """Find the highest multiplier whose run meets ``target`` attainment (see module doc).

    ``run_at(m, fail_fast)`` runs the stream at multiplier ``m``; with ``fail_fast`` it may stop
    as soon as the run can no longer reach the target (``RunResult.aborted``): a failed probe
    then costs a fraction of a full run, and its attainment is only an upper bound.
    """
    found = Goodput(None, None, None)
    lo: float | None = None
    hi: float | None = None

    def probe(m: float) -> bool:
        run = run_at(m, fail_fast)
        att = attainment(run.outcomes)
        ok = att is not None and att >= target and not run.aborted
        s = summarize(run)
        p = Probe(
            m,
            run.offered_rate,
            att if att is not None else 0.0,
            float(s["rejection_rate"]),
            ok,
            run.wall_s,
            run.aborted,
        )  # type: ignore[arg-type]
        found.probes.append(p)
        if on_probe is not None:
            on_probe(p)
        if ok and (found.multiplier is None or m > found.multiplier):
            found.rate, found.multiplier = run.offered_rate, m
            found.rejection_rate, found.best_run = p.rejection_rate, run
        return ok

    m = start
    while len(found.probes) < max_runs:
        if probe(m):
            lo = m
            if hi is not None or m * 2 > highest:
                break
            m *= 2
        else:
            hi = m
            if lo is not None or m / 2 < lowest:
                break
            m /= 2
    while lo is not None and hi is not None and hi / lo > 1 + tolerance:
        if len(found.probes) >= max_runs:
            break
        mid = math.sqrt(lo * hi)
        if probe(mid):
            lo = mid
        else:
            hi = mid
    found.bracketed = hi is not None and found.multiplier is not None
    return found

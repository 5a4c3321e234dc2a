"""What a benchmark run produces: per-request outcomes, engine totals and load samples.

Both runners (virtual time and live HTTP) fill a :class:`RunResult`; :mod:`.report` turns it into
figures. Outcomes are plain records, one per submitted request, so every figure can be recomputed
from the JSON dump. Inter-token latencies go to a log-binned, weighted histogram
(:class:`Histogram`): a virtual run produces millions of token gaps, and percentiles of a
histogram with 1 % wide bins are exact to 1 %.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

_HIST_LO = 1e-4  # seconds: the first bin starts at 0.1 ms
_HIST_GROWTH = 1.01  # bins 1 % wide
_HIST_BINS = 1400  # up to ~110 s


@dataclass(slots=True)
class Outcome:
    """One request's fate (times in seconds since the run's origin; None when not reached)."""

    request_id: str
    cls: str
    priority: str
    arrival: float
    status: str  # completed | rejected | failed | timeout | cancelled | unfinished
    has_slo: bool
    met_slo: bool | None  # None: carried no SLO (or cancelled)
    prompt_tokens: int
    output_tokens: int = 0
    cached_tokens: int = 0
    ttft: float | None = None
    e2e: float | None = None
    tpot: float | None = None
    queue: float | None = None  # arrival → dispatch (virtual runs)
    instance: str | None = None
    cost_usd: float = 0.0
    reason: str | None = None  # why it was rejected / failed
    tenant: str | None = None  # the request class's tenant, if it has one


class Histogram:
    """Weighted samples in log-spaced bins; percentiles by linear scan (bins are few)."""

    def __init__(self) -> None:
        self.counts = [0.0] * _HIST_BINS
        self.total = 0.0
        self._log_growth = math.log(_HIST_GROWTH)

    def add(self, value: float, weight: float = 1.0) -> None:
        if weight <= 0:
            return
        if value <= _HIST_LO:
            i = 0
        else:
            i = min(_HIST_BINS - 1, int(math.log(value / _HIST_LO) / self._log_growth))
        self.counts[i] += weight
        self.total += weight

    def merge(self, other: Histogram) -> None:
        for i, c in enumerate(other.counts):
            self.counts[i] += c
        self.total += other.total

    def quantile(self, q: float) -> float | None:
        if self.total <= 0:
            return None
        target, acc = q * self.total, 0.0
        for i, c in enumerate(self.counts):
            acc += c
            if acc >= target and c > 0:
                return _HIST_LO * _HIST_GROWTH ** (i + 0.5)
        return _HIST_LO * _HIST_GROWTH**_HIST_BINS

    def mean(self) -> float | None:
        if self.total <= 0:
            return None
        s = sum(c * _HIST_LO * _HIST_GROWTH ** (i + 0.5) for i, c in enumerate(self.counts) if c)
        return s / self.total

    def to_dict(self) -> dict[str, object]:
        nz = {i: c for i, c in enumerate(self.counts) if c}
        return {"lo_s": _HIST_LO, "growth": _HIST_GROWTH, "bins": nz, "total": self.total}


@dataclass
class LoadSeries:
    """Per-instance engine load at each scrape: running + waiting requests, KV usage."""

    instances: list[str]
    capacity: list[float]  # relative serving capacity (A100-80G = 1), for normalising
    times: list[float] = field(default_factory=list)
    outstanding: list[list[int]] = field(default_factory=list)  # [sample][instance]
    kv: list[list[float]] = field(default_factory=list)

    def add(self, t: float, outstanding: list[int], kv: list[float]) -> None:
        self.times.append(t)
        self.outstanding.append(outstanding)
        self.kv.append(kv)


@dataclass
class EngineTotals:
    """Counters summed over the fleet's engines at the end of the run."""

    prefix_queries: int = 0  # prompt tokens looked up in the prefix cache
    prefix_hits: int = 0
    preemptions: int = 0
    generation_tokens: int = 0
    steps: int = 0


@dataclass
class RunResult:
    """Everything one run measured (see :mod:`.report` for the figures)."""

    scenario: str
    config: str
    policy: str
    strategy: str
    mode: str  # "virtual" | "live"
    seed: int
    multiplier: float
    offered_rate: float  # requests/s offered over the window
    duration_s: float  # arrival window
    outcomes: list[Outcome]
    itl: Histogram = field(default_factory=Histogram)
    load: LoadSeries | None = None
    engines: EngineTotals = field(default_factory=EngineTotals)
    counters: dict[str, int] = field(default_factory=dict)
    end_s: float = 0.0  # when the last request ended
    wall_s: float = 0.0
    fleet_usd_per_hour: float = 0.0
    notes: list[str] = field(default_factory=list)
    aborted: bool = False  # stopped early once it could no longer meet the target (fail fast)

    def to_dict(self, with_outcomes: bool = True) -> dict[str, object]:
        out = {
            "scenario": self.scenario,
            "config": self.config,
            "policy": self.policy,
            "strategy": self.strategy,
            "mode": self.mode,
            "seed": self.seed,
            "multiplier": self.multiplier,
            "offered_rate": self.offered_rate,
            "duration_s": self.duration_s,
            "engines": asdict(self.engines),
            "counters": self.counters,
            "end_s": self.end_s,
            "wall_s": self.wall_s,
            "fleet_usd_per_hour": self.fleet_usd_per_hour,
            "notes": self.notes,
            "aborted": self.aborted,
            "itl_histogram": self.itl.to_dict(),
        }
        if with_outcomes:
            out["outcomes"] = [asdict(o) for o in self.outcomes]
        return out

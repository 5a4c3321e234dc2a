"""Counters, bounded sample windows and :class:`PerformanceMetrics` from finished requests.

How it works: every request counts once in ``submitted`` and, when it ends, once in the counter
of its terminal state, so at any moment

    submitted = completed + failed + cancelled + rejected + timeout + in_flight

(``in_flight`` is counted by the core from its live records, independently, which is what makes
the identity a check and not a tautology). Latency, TTFT and TPOT percentiles come from bounded
windows of the most recent completions (numpy percentiles); SLO and cost totals are cumulative;
requests/s and tokens/s are computed over a sliding time window.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from vllm_control_plane.core.lifecycle import RequestRecord
from vllm_control_plane.types import PerformanceMetrics, RequestPriority, RequestStatus


@dataclass
class Counters:
    """Cumulative request counts; ``in_flight`` is filled in by the core."""

    submitted: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    rejected: int = 0
    timeout: int = 0
    in_flight: int = 0
    retries: int = 0
    shed: int = 0  # rejected after being queued (queue full, displaced by higher priority)

    @property
    def terminal(self) -> int:
        return self.completed + self.failed + self.cancelled + self.rejected + self.timeout

    def identity_holds(self) -> bool:
        return self.submitted == self.terminal + self.in_flight

    def as_dict(self) -> dict[str, int]:
        return {
            "submitted": self.submitted,
            "completed": self.completed,
            "failed": self.failed,
            "cancelled": self.cancelled,
            "rejected": self.rejected,
            "timeout": self.timeout,
            "in_flight": self.in_flight,
            "retries": self.retries,
            "shed": self.shed,
        }


_TERMINAL_FIELD = {
    RequestStatus.COMPLETED: "completed",
    RequestStatus.FAILED: "failed",
    RequestStatus.CANCELLED: "cancelled",
    RequestStatus.REJECTED: "rejected",
    RequestStatus.TIMEOUT: "timeout",
}


@dataclass
class _SloTally:
    judged: int = 0
    met: int = 0

    def rate(self) -> float:
        return self.met / self.judged if self.judged else 1.0


@dataclass
class Accounting:
    """Feeds on terminal records; answers :meth:`metrics`."""

    window: int = 10_000
    rate_window_s: float = 60.0
    counters: Counters = field(default_factory=Counters)
    _latency: deque[float] = field(init=False)
    _ttft: deque[float] = field(init=False)
    _tpot: deque[float] = field(init=False)
    _finishes: deque[tuple[float, int]] = field(init=False)  # (finished_at, completion tokens)
    _slo: _SloTally = field(default_factory=_SloTally)
    _slo_by_prio: dict[RequestPriority, _SloTally] = field(default_factory=dict)
    _first_submit: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_cost: float = 0.0

    def __post_init__(self) -> None:
        self._latency = deque(maxlen=self.window)
        self._ttft = deque(maxlen=self.window)
        self._tpot = deque(maxlen=self.window)
        self._finishes = deque()

    def on_submitted(self, now: float) -> None:
        self.counters.submitted += 1
        if self._first_submit is None:
            self._first_submit = now

    def on_retry(self) -> None:
        self.counters.retries += 1

    def on_terminal(self, rec: RequestRecord) -> None:
        """Count a request that just reached its terminal state (exactly once per request)."""
        name = _TERMINAL_FIELD[rec.status]
        setattr(self.counters, name, getattr(self.counters, name) + 1)
        self.total_cost += rec.cost_usd
        self._judge_slo(rec)
        if rec.status is RequestStatus.COMPLETED:
            self._record_completion(rec)

    def _judge_slo(self, rec: RequestRecord) -> None:
        met = rec.met_slo()
        if met is None:
            return
        tally = self._slo_by_prio.setdefault(rec.request.priority, _SloTally())
        for t in (self._slo, tally):
            t.judged += 1
            t.met += int(met)

    def _record_completion(self, rec: RequestRecord) -> None:
        self.prompt_tokens += rec.prompt_tokens
        self.completion_tokens += rec.completion_tokens
        e2e, ttft = rec.e2e_ms, rec.ttft_ms
        if e2e is not None:
            self._latency.append(e2e)
        if ttft is not None:
            self._ttft.append(ttft)
        if e2e is not None and ttft is not None and rec.completion_tokens >= 2:
            self._tpot.append((e2e - ttft) / (rec.completion_tokens - 1))  # rec.tpot_ms, inline
        assert rec.finished_at is not None
        self._finishes.append((rec.finished_at, rec.completion_tokens))
        self._prune(rec.finished_at - self.rate_window_s)

    def slo_attainment(self) -> float:
        return self._slo.rate()

    def metrics(self, now: float, in_flight: int) -> PerformanceMetrics:
        c = self.counters
        lat, ttft, tpot = _stats(self._latency), _stats(self._ttft), _stats(self._tpot)
        rps, tps = self._rates(now)
        return PerformanceMetrics(
            total_requests=c.submitted,
            completed_requests=c.completed,
            failed_requests=c.failed,
            cancelled_requests=c.cancelled,
            rejected_requests=c.rejected,
            timeout_requests=c.timeout,
            in_flight_requests=in_flight,
            avg_latency_ms=lat[0],
            p50_latency_ms=lat[1],
            p95_latency_ms=lat[2],
            p99_latency_ms=lat[3],
            avg_ttft_ms=ttft[0],
            p50_ttft_ms=ttft[1],
            p95_ttft_ms=ttft[2],
            p99_ttft_ms=ttft[3],
            avg_tpot_ms=tpot[0],
            p50_tpot_ms=tpot[1],
            p95_tpot_ms=tpot[2],
            p99_tpot_ms=tpot[3],
            requests_per_second=rps,
            tokens_per_second=tps,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            slo_requests=self._slo.judged,
            slo_violations=self._slo.judged - self._slo.met,
            slo_compliance_rate=self._slo.rate(),
            slo_compliance_by_priority={
                p.name.lower(): t.rate() for p, t in sorted(self._slo_by_prio.items())
            },
            total_cost=self.total_cost,
            cost_per_token=self.total_cost / self.completion_tokens
            if self.completion_tokens
            else 0.0,
            retries=c.retries,
        )

    def _rates(self, now: float) -> tuple[float, float]:
        """Completions and generated tokens per second over the sliding window."""
        if self._first_submit is None:
            return 0.0, 0.0
        self._prune(now - self.rate_window_s)
        span = min(self.rate_window_s, now - self._first_submit)
        if span <= 0:
            return 0.0, 0.0
        recent = [f for f in self._finishes if f[0] <= now]
        return len(recent) / span, sum(t for _, t in recent) / span

    def _prune(self, start: float) -> None:
        while self._finishes and self._finishes[0][0] < start:
            self._finishes.popleft()


def _stats(values: Iterable[float]) -> tuple[float, float, float, float]:
    """(mean, p50, p95, p99), zeros when there is nothing to summarise."""
    arr = np.fromiter(values, dtype=float)
    if arr.size == 0:
        return 0.0, 0.0, 0.0, 0.0
    p50, p95, p99 = np.percentile(arr, [50, 95, 99])
    return float(arr.mean()), float(p50), float(p95), float(p99)

"""Retry budget: retries may add at most a fixed share of recent traffic, plus a small floor.

Why: bounded retries per request are not enough when a whole fleet is sick. With two retries
each, a fleet that fails everything would see three times its normal load exactly when it can
least take it. The budget caps retries *across* requests: within the last ``window_s`` seconds,
retries may number at most ``ratio`` × requests + ``floor`` (the floor lets a quiet system retry
at all). A refused retry ends the request FAILED with the reason, as when its per-request retries
run out.

How it works: counts live in ``buckets`` time slices covering the window (O(buckets) memory
whatever the traffic); a slice older than the window is dropped as time moves on. Pure: every
call takes ``now``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryBudgetConfig:
    """Knobs of the retry budget (defaults: see docs/reliability.md)."""

    ratio: float = 0.2
    """Retries allowed per request submitted in the window."""
    floor: int = 10
    """Retries always allowed per window, whatever the traffic."""
    window_s: float = 10.0
    """How far back "recent" reaches."""
    buckets: int = 10
    """Time slices the window is counted in."""

    def __post_init__(self) -> None:
        if self.ratio < 0 or self.floor < 0:
            raise ValueError("RetryBudgetConfig.ratio and floor must be >= 0")
        if self.window_s <= 0 or self.buckets < 1:
            raise ValueError("RetryBudgetConfig needs window_s > 0 and buckets >= 1")


class RetryBudget:
    """Sliding-window counts of requests and retries; answers "may this retry happen?"."""

    def __init__(self, config: RetryBudgetConfig | None = None) -> None:
        self.config = config or RetryBudgetConfig()
        self._width = self.config.window_s / self.config.buckets
        self._slices: deque[list[float]] = deque()  # [slice start, requests, retries]
        self.refused = 0  # retries the budget stopped since start

    def reconfigure(self, config: RetryBudgetConfig) -> None:
        """Switch to ``config`` (a config reload), keeping the counts already in the window: a
        new ratio or floor applies to the traffic seen so far, so no fresh budget is handed out."""
        self.config = config
        self._width = config.window_s / config.buckets

    def on_request(self, now: float) -> None:
        self._slice(now)[1] += 1

    def on_retry(self, now: float) -> None:
        self._slice(now)[2] += 1

    def counts(self, now: float) -> tuple[int, int]:
        """(requests, retries) within the window ending at ``now``."""
        self._expire(now)
        return (
            int(sum(s[1] for s in self._slices)),
            int(sum(s[2] for s in self._slices)),
        )

    def veto(self, now: float) -> str | None:
        """None when one more retry fits the budget, else why not (the caller counts a refusal
        in ``refused`` only when the budget was what stopped the retry)."""
        requests, retries = self.counts(now)
        allowed = self.config.ratio * requests + self.config.floor
        if retries + 1 <= allowed:
            return None
        return (
            f"retry budget exhausted: {retries} retries in the last {self.config.window_s:g} s "
            f"(allowed {self.config.ratio:g} x {requests} requests + {self.config.floor})"
        )

    def _slice(self, now: float) -> list[float]:
        self._expire(now)
        start = now - now % self._width
        if not self._slices or self._slices[-1][0] < start:
            self._slices.append([start, 0, 0])
        return self._slices[-1]

    def _expire(self, now: float) -> None:
        horizon = now - self.config.window_s
        while self._slices and self._slices[0][0] + self._width <= horizon:
            self._slices.popleft()

"""``adaptive``: runs one of the other policies and switches with hysteresis.

It watches a sliding window of recent outcomes (did each request that carried an SLO meet it)
plus fleet signals (queue depth, utilisation, price spread) and picks, in this order:

1. ``slo_aware`` when SLO attainment over the window falls below ``enter_slo`` (90 %); it stays
   until attainment is back to ``exit_slo`` (97 %) — the gap is the hysteresis, so a policy that
   restores attainment is not switched off the moment it works.
2. ``cost_optimized`` when the fleet is lightly used (utilisation below ``enter_cost_util``, no
   backlog) and instances of one model differ in price: cheap instances can carry the load
   without hurting latency. It leaves when utilisation exceeds ``exit_cost_util`` or a backlog
   builds up.
3. otherwise ``priority`` (with aging): it honours the priorities clients set and degrades to
   FIFO when they are all equal.

A switch needs ``min_samples`` judged outcomes in the window and at least ``dwell`` outcomes
since the last switch, so one burst cannot make it flap. A switch changes the queue order, so
:meth:`observe` returns True and the core re-keys its queue (O(n log n), rare by construction).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from vllm_control_plane.core.lifecycle import RequestRecord
from vllm_control_plane.core.policies.base import (
    Candidates,
    FleetSignals,
    Instances,
    PolicyContext,
    SchedulingPolicy,
    Verdict,
)
from vllm_control_plane.core.policies.cost_optimized import CostOptimizedPolicy
from vllm_control_plane.core.policies.priority import PriorityPolicy
from vllm_control_plane.core.policies.slo_aware import SloAwarePolicy
from vllm_control_plane.core.queue import QueueKey


@dataclass(frozen=True)
class AdaptiveSettings:
    window: int = 200  # outcomes remembered
    min_samples: int = 20  # judged (SLO-carrying) outcomes needed before attainment counts
    dwell: int = 50  # outcomes between two switches
    enter_slo: float = 0.90
    exit_slo: float = 0.97
    enter_cost_util: float = 0.5
    exit_cost_util: float = 0.8
    min_price_spread: float = 1.10  # dearest / cheapest price per GPU-hour of one model


class AdaptivePolicy(SchedulingPolicy):
    name = "adaptive"

    def __init__(self, ctx: PolicyContext, settings: AdaptiveSettings | None = None) -> None:
        super().__init__(ctx)
        self.configure(settings or AdaptiveSettings())
        self._subs: dict[str, SchedulingPolicy] = {
            p.name: p(ctx) for p in (PriorityPolicy, SloAwarePolicy, CostOptimizedPolicy)
        }
        self.active: SchedulingPolicy = self._subs["priority"]
        self.why = "default: priority order with aging"
        self.switches = 0

    def configure(self, settings: AdaptiveSettings) -> None:
        """Adopt new thresholds; forgets the outcome window."""
        self.settings = settings
        self._outcomes: deque[bool | None] = deque(maxlen=settings.window)
        self._judged = 0
        self._met = 0
        self._since_switch = 0

    # -- delegation ---------------------------------------------------------------------------
    def order_key(self, rec: RequestRecord) -> QueueKey:
        return self.active.order_key(rec)

    def admit(self, rec: RequestRecord, serving: Instances, now: float) -> str | None:
        return self.active.admit(rec, serving, now)

    def place(self, rec: RequestRecord, cands: Candidates, now: float) -> Verdict:
        return self.active.place(rec, cands, now)

    @property
    def label(self) -> str:
        return f"{self.name}/{self.active.name}"

    def describe(self) -> dict[str, object]:
        attainment = self.attainment()
        return {
            "policy": self.name,
            "active_policy": self.active.name,
            "why": self.why,
            "switches": self.switches,
            "window_slo_attainment": attainment,
        }

    # -- switching ----------------------------------------------------------------------------
    def attainment(self) -> float | None:
        if self._judged < self.settings.min_samples:
            return None
        return self._met / self._judged

    def observe(self, rec: RequestRecord, signals: FleetSignals) -> bool:
        self._remember(rec.met_slo())
        self._since_switch += 1
        if self._since_switch < self.settings.dwell:
            return False
        target, why = self._choose(signals)
        if target == self.active.name:
            self.why = why
            return False
        self.active, self.why = self._subs[target], why
        self.switches += 1
        self._since_switch = 0
        return True

    def _remember(self, met: bool | None) -> None:
        """Slide the window, keeping judged / met counts so attainment is O(1)."""
        if len(self._outcomes) == self._outcomes.maxlen:
            old = self._outcomes[0]
            if old is not None:
                self._judged -= 1
                self._met -= int(old)
        self._outcomes.append(met)
        if met is not None:
            self._judged += 1
            self._met += int(met)

    def _choose(self, sig: FleetSignals) -> tuple[str, str]:
        s, att, current = self.settings, self.attainment(), self.active.name
        n = len(self._outcomes)
        if att is not None and att < s.enter_slo:
            return "slo_aware", f"SLO attainment {att:.0%} < {s.enter_slo:.0%} over last {n}"
        if att is not None and current == "slo_aware" and att < s.exit_slo:
            return "slo_aware", f"SLO attainment {att:.0%} not yet back to {s.exit_slo:.0%}"
        if sig.price_spread >= s.min_price_spread and sig.queue_depth == 0:
            limit = s.exit_cost_util if current == "cost_optimized" else s.enter_cost_util
            if sig.utilisation < limit:
                return "cost_optimized", (
                    f"utilisation {sig.utilisation:.0%} < {limit:.0%}, no backlog, "
                    f"prices differ ×{sig.price_spread:.2f}"
                )
        return "priority", f"default: priority order (queue depth {sig.queue_depth})"

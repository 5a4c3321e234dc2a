"""``least_response_time``: lowest EWMA latency × (in-flight + 1), untried instances first.

Latency is learnt from this strategy's own dispatch → completion times (EWMA, α = 0.2); before
it has seen a completion on an instance it uses the core's ``avg_latency_ms`` if non-zero.
An instance with neither is *untried*: an idle untried candidate is probed first (one request at
a time, so a burst does not pile onto a server nobody has measured); while its probe runs it is
priced at the mean latency of the measured candidates. Ties go to the first candidate.
Scores are the costs min-max normalised.
"""

from __future__ import annotations

from collections.abc import Sequence

from vllm_control_plane.core.interfaces import (
    RouteChoice,
    RouteRequest,
    RoutingContext,
    RoutingStrategy,
)
from vllm_control_plane.core.routing._common import InflightTokens, active, minmax_scores, pick_min
from vllm_control_plane.types import ExecutionInstance

ALPHA = 0.2  # EWMA weight of the newest sample: ~5 requests of memory


class LeastResponseTime(RoutingStrategy):
    name = "least_response_time"

    def __init__(self, context: RoutingContext | None = None) -> None:
        super().__init__(context)
        self._inflight = InflightTokens()
        self._ewma_ms: dict[str, float] = {}

    def _latency_ms(self, inst: ExecutionInstance) -> float | None:
        own = self._ewma_ms.get(inst.instance_id)
        if own is not None:
            return own
        return inst.avg_latency_ms if inst.avg_latency_ms > 0 else None

    def select(self, req: RouteRequest, candidates: Sequence[ExecutionInstance]) -> RouteChoice:
        latency = {c.instance_id: self._latency_ms(c) for c in candidates}
        for c in candidates:
            if latency[c.instance_id] is None and active(c, self._inflight) == 0:
                scores = {iid: (1.0 if iid == c.instance_id else 0.0) for iid in latency}
                return RouteChoice(c.instance_id, "probing an untried instance", scores)
        measured = [v for v in latency.values() if v is not None]
        prior = sum(measured) / len(measured) if measured else 1.0

        def cost(c: ExecutionInstance) -> float:
            lat = latency[c.instance_id]
            return (prior if lat is None else lat) * (active(c, self._inflight) + 1)

        best, costs = pick_min(candidates, cost)
        reason = f"least latency × load: {costs[best.instance_id]:.0f} ms·req"
        return RouteChoice(best.instance_id, reason, minmax_scores(costs))

    def on_dispatch(self, req: RouteRequest, instance_id: str) -> None:
        self._inflight.add(req, instance_id)

    def on_complete(self, request_id: str, instance_id: str, now: float) -> None:
        flight = self._inflight.remove(request_id)
        if flight is None:
            return
        sample = max(0.0, now - flight.started) * 1000.0
        old = self._ewma_ms.get(flight.instance_id)
        self._ewma_ms[flight.instance_id] = sample if old is None else old + ALPHA * (sample - old)

    def on_instance_removed(self, instance_id: str) -> None:
        self._inflight.forget_instance(instance_id)
        self._ewma_ms.pop(instance_id, None)

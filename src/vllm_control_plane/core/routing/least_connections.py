"""``least_connections``: the candidate with the fewest requests in flight.

In-flight = the core's ``active_requests`` (or this strategy's own dispatch count if that is
higher, i.e. the core's view lags). Ties go to the larger instance (capacity), then to the
smallest instance id, so the choice never depends on candidate order or chance.
Scores: (fewest + 1) / (own + 1).
"""

from __future__ import annotations

from collections.abc import Sequence

from vllm_control_plane.core.interfaces import (
    RouteChoice,
    RouteRequest,
    RoutingContext,
    RoutingStrategy,
)
from vllm_control_plane.core.routing._common import InflightTokens, active, capacity
from vllm_control_plane.types import ExecutionInstance


class LeastConnections(RoutingStrategy):
    name = "least_connections"

    def __init__(self, context: RoutingContext | None = None) -> None:
        super().__init__(context)
        self._inflight = InflightTokens()

    def select(self, req: RouteRequest, candidates: Sequence[ExecutionInstance]) -> RouteChoice:
        counts = {c.instance_id: active(c, self._inflight) for c in candidates}
        fewest = min(counts.values())
        tied = [c for c in candidates if counts[c.instance_id] == fewest]
        best = min(tied, key=lambda c: (-capacity(c), c.instance_id))
        scores = {iid: (fewest + 1) / (n + 1) for iid, n in counts.items()}
        return RouteChoice(best.instance_id, f"fewest in flight ({fewest})", scores)

    def on_dispatch(self, req: RouteRequest, instance_id: str) -> None:
        self._inflight.add(req, instance_id)

    def on_complete(self, request_id: str, instance_id: str, now: float) -> None:
        self._inflight.remove(request_id)

    def on_instance_removed(self, instance_id: str) -> None:
        self._inflight.forget_instance(instance_id)

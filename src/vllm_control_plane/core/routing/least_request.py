"""``least_request`` (baseline): AIBrix's ``least-request`` router.

AIBrix routes to "a pod with the fewest ongoing requests": the count of requests the gateway
has in flight on each pod, ties broken uniformly at random (``rand.Intn`` over the tied pods in
``least_request.go``). Here: the in-flight count of ``least_connections`` with a random tie-break
drawn from the context's rng. vLLM production-stack has no router of this name; its closest,
``priority``/session fallback, picks the lowest QPS (see ``prodstack_session``).
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
from vllm_control_plane.core.routing._common import InflightTokens, active
from vllm_control_plane.types import ExecutionInstance


class LeastRequest(RoutingStrategy):
    name = "least_request"

    def __init__(self, context: RoutingContext | None = None) -> None:
        super().__init__(context)
        self._inflight = InflightTokens()

    def select(self, req: RouteRequest, candidates: Sequence[ExecutionInstance]) -> RouteChoice:
        counts = {c.instance_id: active(c, self._inflight) for c in candidates}
        fewest = min(counts.values())
        tied = [iid for iid, n in counts.items() if n == fewest]
        pick = tied[self.context.rng.randrange(len(tied))] if len(tied) > 1 else tied[0]
        scores = {iid: (fewest + 1) / (n + 1) for iid, n in counts.items()}
        reason = f"fewest in flight ({fewest}), random among {len(tied)} tied"
        return RouteChoice(pick, reason, scores)

    def on_dispatch(self, req: RouteRequest, instance_id: str) -> None:
        self._inflight.add(req, instance_id)

    def on_complete(self, request_id: str, instance_id: str, now: float) -> None:
        self._inflight.remove(request_id)

    def on_instance_removed(self, instance_id: str) -> None:
        self._inflight.forget_instance(instance_id)

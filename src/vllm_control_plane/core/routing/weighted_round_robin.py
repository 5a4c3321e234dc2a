"""``weighted_round_robin``: nginx's smooth weighted round robin.

Each pick, every candidate's *current weight* grows by its weight; the largest current weight
wins (first candidate on ties) and is lowered by the sum of the candidates' weights. Over any
window of Σw consecutive picks (integer weights, stable candidates) each instance is chosen
exactly w times, spread out rather than in bursts (weights 5, 1, 1 give a a b a c a a).

Weight: the instance's ``weight`` if set, else its capacity (GPUs × speed class, A100-80G = 1,
see ``_common``), so a TP4 H100 gets ~6.6 turns for an L4's ~0.15 unless told otherwise.
Instances that are not candidates (full, unhealthy) neither gain nor lose current weight.
Negative weights count as 0; if every weight is 0 all count as 1.
Scores are the weights over the largest weight.
"""

from __future__ import annotations

from collections.abc import Sequence

from vllm_control_plane.core.interfaces import (
    RouteChoice,
    RouteRequest,
    RoutingContext,
    RoutingStrategy,
)
from vllm_control_plane.core.routing._common import capacity
from vllm_control_plane.types import ExecutionInstance


def instance_weight(inst: ExecutionInstance) -> float:
    """Configured weight, or capacity when none is configured."""
    return max(0.0, inst.weight) if inst.weight is not None else capacity(inst)


class WeightedRoundRobin(RoutingStrategy):
    name = "weighted_round_robin"

    def __init__(self, context: RoutingContext | None = None) -> None:
        super().__init__(context)
        self._current: dict[str, float] = {}

    def select(self, req: RouteRequest, candidates: Sequence[ExecutionInstance]) -> RouteChoice:
        weights = {c.instance_id: instance_weight(c) for c in candidates}
        if not any(weights.values()):
            weights = dict.fromkeys(weights, 1.0)
        best: str | None = None
        for iid, w in weights.items():
            self._current[iid] = self._current.get(iid, 0.0) + w
            if best is None or self._current[iid] > self._current[best]:
                best = iid
        assert best is not None  # candidates is non-empty
        self._current[best] -= sum(weights.values())
        top = max(weights.values())
        scores = {iid: w / top for iid, w in weights.items()}
        reason = (
            f"smooth weighted round robin (weight {weights[best]:g} of {sum(weights.values()):g})"
        )
        return RouteChoice(best, reason, scores)

    def on_instance_removed(self, instance_id: str) -> None:
        self._current.pop(instance_id, None)

"""``random``: a uniformly random candidate, drawn from the context's seeded generator.

The classic baseline (AIBrix ``random``, SGLang router ``random``). Every candidate scores its
probability of being picked, 1/n.
"""

from __future__ import annotations

from collections.abc import Sequence

from vllm_control_plane.core.interfaces import RouteChoice, RouteRequest, RoutingStrategy
from vllm_control_plane.types import ExecutionInstance


class RandomPick(RoutingStrategy):
    name = "random"

    def select(self, req: RouteRequest, candidates: Sequence[ExecutionInstance]) -> RouteChoice:
        pick = candidates[self.context.rng.randrange(len(candidates))]
        p = 1.0 / len(candidates)
        scores = {c.instance_id: p for c in candidates}
        return RouteChoice(pick.instance_id, f"uniform random among {len(candidates)}", scores)

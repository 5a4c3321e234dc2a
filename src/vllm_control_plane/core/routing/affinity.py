"""``affinity``: keep a session (or user) on one instance — consistent hashing with bounded load.

The key is ``session_id``, else ``user_id``. Instances sit on a hash ring (160 virtual nodes
each, md5), so adding or removing one moves only ~1/n of the keys. A key's preferred instance is
its owner on the ring restricted to the candidates; if that instance is over the load bound it
walks clockwise to the next candidate within the bound (Mirrokni, Thorup & Zadimoghaddam,
"Consistent Hashing with Bounded Loads", 2018). The bound for instance i is
``ceil((1 + ε) × (fleet in-flight + 1) × capacity_i / Σ capacity)`` over the candidates, ε = 0.25
by default: no instance takes more than 25 % above its fair share, and a user returns home as
soon as home has room again. Without a key: the least loaded, (in-flight + 1) / capacity.
Scores: the pick 1; candidates the walk passed because they were over the bound 0.
"""

from __future__ import annotations

from collections.abc import Sequence

from vllm_control_plane.core.interfaces import (
    RouteChoice,
    RouteRequest,
    RoutingContext,
    RoutingStrategy,
)
from vllm_control_plane.core.routing._common import capacity, minmax_scores, over_bound, pick_min
from vllm_control_plane.core.routing._hashring import HashRing
from vllm_control_plane.types import ExecutionInstance


class Affinity(RoutingStrategy):
    name = "affinity"

    def __init__(
        self, context: RoutingContext | None = None, *, epsilon: float = 0.25, vnodes: int = 160
    ) -> None:
        super().__init__(context)
        if epsilon < 0:
            raise ValueError(f"epsilon must be >= 0, got {epsilon}")
        self.epsilon = epsilon
        self._ring = HashRing(vnodes)

    def select(self, req: RouteRequest, candidates: Sequence[ExecutionInstance]) -> RouteChoice:
        key = req.request.affinity_key
        if key is None:
            best, costs = pick_min(candidates, lambda c: (c.active_requests + 1) / capacity(c))
            return RouteChoice(
                best.instance_id, "no affinity key: least loaded", minmax_scores(costs)
            )
        by_id = {c.instance_id: c for c in candidates}
        self._ring.ensure(by_id)
        fleet = sum(c.active_requests for c in candidates)
        total_cap = sum(capacity(c) for c in candidates)
        scores: dict[str, float] = {}
        for iid in self._ring.walk(key):
            inst = by_id.get(iid)
            if inst is None:
                continue
            if not over_bound(inst, fleet, capacity(inst) / total_cap, self.epsilon):
                scores[iid] = 1.0
                hops = len(scores) - 1
                where = "home instance" if hops == 0 else f"{hops} hop(s) past over-loaded"
                return RouteChoice(iid, f"affinity {key!r}: {where}", scores)
            scores[iid] = 0.0
        # Unreachable with ε >= 0 (someone is at or below the mean); kept as a safe answer.
        best, costs = pick_min(candidates, lambda c: (c.active_requests + 1) / capacity(c))
        return RouteChoice(best.instance_id, "every candidate over bound: least loaded", scores)

    def on_instance_removed(self, instance_id: str) -> None:
        self._ring.remove(instance_id)

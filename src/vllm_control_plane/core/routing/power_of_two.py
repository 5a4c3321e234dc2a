"""``power_of_two``: sample two distinct candidates at random, keep the less loaded.

Load is the predicted drain time of ``load_balanced``'s fallback (in-flight tokens incl. this
request, KV pressure, over capacity), so the comparison is fair between a TP4 H100 and an L4.
Two choices keep the maximum load within O(log log n) of the mean while reading the state of
only two servers (Mitzenmacher 2001); here that means a decision costs O(1) in fleet size.
Ties keep the first sampled. Only the two sampled candidates get scores (min-max of their loads).
Subclasses change the load measure (``pow2_inflight``: in-flight count).
"""

from __future__ import annotations

from collections.abc import Sequence

from vllm_control_plane.core.interfaces import (
    RouteChoice,
    RouteRequest,
    RoutingContext,
    RoutingStrategy,
)
from vllm_control_plane.core.routing._common import InflightTokens, drain_time, minmax_scores
from vllm_control_plane.types import ExecutionInstance


class PowerOfTwo(RoutingStrategy):
    name = "power_of_two"
    load_label = "drain"

    def __init__(self, context: RoutingContext | None = None) -> None:
        super().__init__(context)
        self._inflight = InflightTokens()

    def load(self, inst: ExecutionInstance, req: RouteRequest) -> float:
        return drain_time(inst, self._inflight, req.prompt_tokens + req.output_tokens)

    def select(self, req: RouteRequest, candidates: Sequence[ExecutionInstance]) -> RouteChoice:
        if len(candidates) == 1:
            only = candidates[0]
            return RouteChoice(only.instance_id, "only candidate", {only.instance_id: 1.0})
        i, j = self.context.rng.sample(range(len(candidates)), 2)
        a, b = candidates[i], candidates[j]
        loads = {a.instance_id: self.load(a, req), b.instance_id: self.load(b, req)}
        pick = b if loads[b.instance_id] < loads[a.instance_id] else a
        other = a if pick is b else b
        reason = (
            f"two choices: {self.load_label} {loads[pick.instance_id]:g} "
            f"vs {loads[other.instance_id]:g} on {other.instance_id}"
        )
        return RouteChoice(pick.instance_id, reason, minmax_scores(loads))

    def on_dispatch(self, req: RouteRequest, instance_id: str) -> None:
        self._inflight.add(req, instance_id)

    def on_complete(self, request_id: str, instance_id: str, now: float) -> None:
        self._inflight.remove(request_id)

    def on_instance_removed(self, instance_id: str) -> None:
        self._inflight.forget_instance(instance_id)

"""``cost_optimized``: the cheapest instances that still meet the request's SLO.

Order: like ``priority`` (with aging) — this policy's job is where requests go, not when.

Placement, per request at dispatch time, over every healthy instance of its model (full ones
too): estimate the request's cost on each (``Prediction.cost_usd``: its predicted time there ×
the instance's price × GPUs, shared with the batch it would join — so a fast dear GPU can be the
cheaper one), keep those whose prediction meets the SLO and the budget, and group them in price
bands: a band starts at its cheapest estimate and holds everything within ``band`` (10 %) of it,
so equal-priced instances share load.

* A request **with** an SLO gets every band as a tier, cheapest first: when the cheap band is
  full it spills to the next one rather than miss its deadline.
* A request **without** an SLO only gets the cheapest band and waits for room there — nothing
  is worth paying more for.
* When no instance can meet the SLO, it goes to the cheapest band anyway (paying more would not
  save it). The cost budget is enforced by :meth:`SchedulingPolicy.budget_filter`.
"""

from __future__ import annotations

from vllm_control_plane.core.interfaces import Prediction
from vllm_control_plane.core.lifecycle import RequestRecord
from vllm_control_plane.core.policies.base import (
    Candidates,
    Defer,
    Instances,
    Placement,
    SchedulingPolicy,
    Verdict,
)
from vllm_control_plane.core.policies.priority import aged_priority_key
from vllm_control_plane.core.policies.slo_aware import feasible, has_deadline
from vllm_control_plane.core.queue import QueueKey
from vllm_control_plane.types import ExecutionInstance

BAND = 0.10  # instances within 10 % of a band's cheapest estimate count as equally cheap


def price_bands(
    instances: Instances, preds: dict[str, Prediction], band: float = BAND
) -> list[list[ExecutionInstance]]:
    """Group ``instances`` by estimated cost, cheapest band first."""
    costs = [preds[i.instance_id].cost_usd for i in instances]
    order = sorted(range(len(costs)), key=costs.__getitem__)  # stable: ties keep their order
    bands: list[list[ExecutionInstance]] = []
    ceiling = 0.0
    for k in order:
        cost = costs[k]
        if not bands or cost > ceiling:
            bands.append([])
            ceiling = cost * (1 + band)
        bands[-1].append(instances[k])
    return bands


def cheapest_band(
    instances: Instances, preds: dict[str, Prediction], band: float = BAND
) -> list[list[ExecutionInstance]]:
    """Just the first band of :func:`price_bands` (no sort): what a request without SLO uses."""
    if not instances:
        return []
    costs = [preds[i.instance_id].cost_usd for i in instances]
    ceiling = min(costs) * (1 + band)
    return [[i for i, cost in zip(instances, costs, strict=True) if cost <= ceiling]]


class CostOptimizedPolicy(SchedulingPolicy):
    name = "cost_optimized"

    # Ids of the last tuple of instances with room: the core hands out the same tuple until an
    # instance gains or loses room, and every placement in between asks for them.
    _last_room: tuple[Instances, frozenset[str]] | None = None

    def _ids_of(self, room: Instances) -> frozenset[str]:
        last = self._last_room
        if last is not None and last[0] is room:
            return last[1]
        ids = frozenset(i.instance_id for i in room)
        if isinstance(room, tuple):  # immutable: safe to recognise by identity
            self._last_room = (room, ids)
        return ids

    def order_key(self, rec: RequestRecord) -> QueueKey:
        return aged_priority_key(rec, self.ctx.limits.aging_s)

    def place(self, rec: RequestRecord, cands: Candidates, now: float) -> Verdict:
        filtered = self.budget_filter(rec, cands)
        if not isinstance(filtered, tuple):
            return filtered
        everywhere = cands.everywhere()
        preds = self.ctx.predict_all(rec, everywhere)
        budget = rec.request.cost_budget
        usable = everywhere
        if budget is not None:
            usable = [i for i in everywhere if preds[i.instance_id].cost_usd <= budget]
        slo = has_deadline(rec)
        ok = feasible(rec, usable, preds, now) if slo else usable
        bands = price_bands(ok or usable, preds) if slo else cheapest_band(usable, preds)
        if not ok:
            bands = bands[:1]
        room_ids = self._ids_of(filtered[0])
        tiers = tuple(tuple(i for i in b if i.instance_id in room_ids) for b in bands)
        if not any(tiers):
            wait_for = frozenset(i.instance_id for i in bands[0]) if bands else None
            return Defer("cost_optimized: waiting for room on the cheapest instances", wait_for)
        cheapest = preds[bands[0][0].instance_id].cost_usd
        note = "" if ok else "; no instance meets the SLO"
        reason = f"cost_optimized: cheapest band est. ${cheapest:.6f}{note}"
        return Placement(tiers, reason, preds)

"""``round_robin``: each instance in turn, in instance-id order.

The cursor is the id last chosen; the next pick is the first candidate whose id sorts after it
(wrapping). Over a stable candidate set this is production-stack's ``roundrobin`` router (sorted
endpoints, a counter modulo their number); when candidates come and go (an instance full, one
added) it still visits each present instance once per turn instead of skipping or repeating.
Scores say how soon each candidate's turn comes (the pick 1, the last in line 0).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from vllm_control_plane.core.interfaces import RouteChoice, RouteRequest, RoutingStrategy
from vllm_control_plane.types import ExecutionInstance


class RoundRobin(RoutingStrategy):
    name = "round_robin"

    _last: str | None = None
    # The sorted ids of the last candidate tuple (the core hands out the same tuple until the
    # set of instances with room changes) and the score of each turn for the last length.
    _sorted_for: tuple[Sequence[ExecutionInstance], list[str]] | None = None
    _turn_scores: tuple[float, ...] = ()

    def select(self, req: RouteRequest, candidates: Sequence[ExecutionInstance]) -> RouteChoice:
        ids = self._sorted_ids(candidates)
        start = 0 if self._last is None else bisect.bisect_right(ids, self._last) % len(ids)
        order = ids[start:] + ids[:start]
        self._last = order[0]
        n = len(order)
        if len(self._turn_scores) != n:
            self._turn_scores = tuple(1.0 - k / max(1, n - 1) for k in range(n))
        scores = dict(zip(order, self._turn_scores, strict=True))
        return RouteChoice(order[0], f"round robin: turn {start + 1} of {n}", scores)

    def _sorted_ids(self, candidates: Sequence[ExecutionInstance]) -> list[str]:
        last = self._sorted_for
        if last is not None and last[0] is candidates:
            return last[1]
        ids = sorted(c.instance_id for c in candidates)
        if isinstance(candidates, tuple):  # immutable: safe to recognise by identity
            self._sorted_for = (candidates, ids)
        return ids

    def on_instance_removed(self, instance_id: str) -> None:
        # The cursor is a position in id order, valid whether or not that id still exists.
        pass

"""``prodstack_session`` (baseline): vLLM production-stack's ``session`` router.

Production-stack (``src/vllm_router/routers/routing_logic.py``, ``SessionRouter``) reads the
session id from the header named by ``--session-key`` (or the same key in the JSON body) and
maps it with ``uhashring.HashRing`` — md5, 160 points per endpoint, ring rebuilt from the
current endpoints. Without a session id it falls back to ``_qps_routing``: the first endpoint
with no request statistics yet, else the lowest QPS, QPS being requests *sent* to the endpoint in
the last ``--request-stats-window`` seconds (default 60) divided by the window.

Here the session id is the request's ``session_id`` (else ``user_id``: the gateway maps the
configured header onto them); endpoints are the candidates (the ring of all instances seen,
walked to the first candidate, equals a ring rebuilt from the candidates). There is no load
bound: a hot session stays on its instance. Scores: the pick 1, others 0 (hashing has no
graded preference); in QPS mode, min-max of the QPS.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from vllm_control_plane.core.interfaces import (
    RouteChoice,
    RouteRequest,
    RoutingContext,
    RoutingStrategy,
)
from vllm_control_plane.core.routing._common import minmax_scores
from vllm_control_plane.core.routing._hashring import HashRing
from vllm_control_plane.types import ExecutionInstance

STATS_WINDOW_S = 60.0  # production-stack --request-stats-window default
UHASHRING_VNODES = 160  # uhashring's default points per node (md5 ring)


class ProdstackSession(RoutingStrategy):
    name = "prodstack_session"

    def __init__(
        self, context: RoutingContext | None = None, *, window_s: float = STATS_WINDOW_S
    ) -> None:
        super().__init__(context)
        self.window_s = window_s
        self._ring = HashRing(UHASHRING_VNODES)
        self._arrivals: dict[str, deque[float]] = {}

    def _qps(self, instance_id: str, now: float) -> float:
        times = self._arrivals[instance_id]
        while times and times[0] < now - self.window_s:
            times.popleft()
        return len(times) / self.window_s

    def select(self, req: RouteRequest, candidates: Sequence[ExecutionInstance]) -> RouteChoice:
        ids = [c.instance_id for c in candidates]
        key = req.request.affinity_key
        if key is not None:
            self._ring.ensure(ids)
            allowed = set(ids)
            pick = next(iid for iid in self._ring.walk(key) if iid in allowed)
            scores = {iid: float(iid == pick) for iid in ids}
            return RouteChoice(pick, f"session {key!r}: hash ring owner", scores)
        for iid in ids:
            if iid not in self._arrivals:
                return RouteChoice(iid, "no session id: engine without stats", {iid: 1.0})
        qps = {iid: self._qps(iid, req.now) for iid in ids}
        pick = min(ids, key=qps.__getitem__)
        reason = f"no session id: lowest QPS ({qps[pick]:.2f}/s over {self.window_s:g} s)"
        return RouteChoice(pick, reason, minmax_scores(qps))

    def on_dispatch(self, req: RouteRequest, instance_id: str) -> None:
        self._arrivals.setdefault(instance_id, deque()).append(req.now)

    def on_instance_removed(self, instance_id: str) -> None:
        self._ring.remove(instance_id)
        self._arrivals.pop(instance_id, None)

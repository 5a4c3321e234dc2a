"""``sglang_cache_aware`` (baseline): the SGLang router's ``cache_aware`` policy.

As in ``sgl-router/src/policies/cache_aware.rs`` with the router's command-line defaults
(``cache_threshold`` 0.3, ``balance_abs_threshold`` 64, ``balance_rel_threshold`` 1.5,
``eviction_interval_secs`` 120, ``max_tree_size`` 2**26):

1. Loads are the router's own in-flight request counts per worker. If
   ``max − min > 64`` and ``max > 1.5 × min`` the system is imbalanced: pick the least loaded
   (first on ties) and still insert the text into the tree under it.
2. Else match the request's raw text against one approximate radix tree shared by all
   workers; match rate = matched characters / text characters. If it exceeds 0.3, pick the
   worker at the deepest matched node; otherwise the worker with the smallest tree (fewest
   characters). Insert the text under the pick.
3. Every 120 s (here: checked at the next decision, in core time) trim each worker's tree to
   2**26 characters by evicting its least recently used leaves.

Deviations, forced by our contract: only candidates are eligible, so at the matched node we take
the most recently used *candidate* tenant, walking up to shallower nodes if none is there (SGLang
takes an arbitrary tenant of the node and falls back to the first healthy worker); ties among
smallest trees go to the first candidate. Scores: match rate of each candidate's tenancy along
the matched path.
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
from vllm_control_plane.core.routing._radix_tree import RadixTree
from vllm_control_plane.types import ExecutionInstance


class SglangCacheAware(RoutingStrategy):
    name = "sglang_cache_aware"

    def __init__(
        self,
        context: RoutingContext | None = None,
        *,
        cache_threshold: float = 0.3,
        balance_abs_threshold: int = 64,
        balance_rel_threshold: float = 1.5,
        eviction_interval_s: float = 120.0,
        max_tree_size: int = 2**26,
    ) -> None:
        super().__init__(context)
        self.cache_threshold = cache_threshold
        self.balance_abs_threshold = balance_abs_threshold
        self.balance_rel_threshold = balance_rel_threshold
        self.eviction_interval_s = eviction_interval_s
        self.max_tree_size = max_tree_size
        self.tree = RadixTree()
        self._inflight = InflightTokens()
        self._last_eviction: float | None = None

    def _maybe_evict(self, now: float) -> None:
        if self._last_eviction is None:
            self._last_eviction = now
        elif now - self._last_eviction >= self.eviction_interval_s:
            self._last_eviction = now
            self.tree.evict(self.max_tree_size)

    def select(self, req: RouteRequest, candidates: Sequence[ExecutionInstance]) -> RouteChoice:
        self._maybe_evict(req.now)
        loads = {c.instance_id: active(c, self._inflight) for c in candidates}
        hi, lo = max(loads.values()), min(loads.values())
        if hi - lo > self.balance_abs_threshold and hi > lo * self.balance_rel_threshold:
            pick = min(loads, key=loads.__getitem__)
            return RouteChoice(pick, f"imbalanced ({hi} vs {lo}): shortest queue", {pick: 1.0})
        text = req.prompt_text
        path, _ = self.tree.match(text)
        scores: dict[str, float] = {}
        pick = None
        for node, depth in reversed(path):  # deepest first
            tenants = [t for t in node.tenants if t in loads and t not in scores]
            for t in tenants:
                scores[t] = depth / len(text) if text else 0.0
            if pick is None and tenants:
                pick = max(tenants, key=node.tenants.__getitem__)
        rate = scores.get(pick, 0.0) if pick is not None else 0.0
        if pick is not None and rate > self.cache_threshold:
            return RouteChoice(pick, f"cache hit: match rate {rate:.2f}", scores)
        sizes = self.tree.char_count
        pick = min(loads, key=lambda iid: sizes.get(iid, 0))
        reason = f"match rate {rate:.2f} <= {self.cache_threshold}: smallest tree"
        return RouteChoice(pick, reason, scores)

    def on_dispatch(self, req: RouteRequest, instance_id: str) -> None:
        self._inflight.add(req, instance_id)
        self.tree.insert(req.prompt_text, instance_id, req.now)

    def on_complete(self, request_id: str, instance_id: str, now: float) -> None:
        self._inflight.remove(request_id)

    def on_instance_removed(self, instance_id: str) -> None:
        self._inflight.forget_instance(instance_id)
        self.tree.remove_tenant(instance_id)

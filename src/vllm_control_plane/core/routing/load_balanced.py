"""``load_balanced``: least predicted load — in-flight tokens, engine queues and KV usage.

With an estimator in the context (the core's default), the cost of a candidate is the
estimator's predicted end-to-end latency of this request there, stretched by KV pressure:

    cost = latency / (1 − u/2),   u = max(scraped KV usage, in-flight tokens / KV capacity)

* The **latency** (queueing + prefill + decode from the instance's live state) sees the engine's
  batch and queue by *count* — scraped running / waiting and the core's active requests — and the
  instance's GPU, model, TP and PP, so a fast, idle TP4 H100 beats a busy L4 for the right
  reasons. It does not see how big the requests in flight are, nor how full the KV cache is.
* **u** adds both: the scraped ``kv_cache_usage``, and the KV the instance is heading for — the
  tokens in flight there (:func:`~._common.inflight_work`: prompt + expected output of each
  request this strategy dispatched and has not seen complete, requests known only by count × our
  mean, plus this request) over its KV capacity (:func:`~._common.kv_capacity_tokens`). The
  larger counts: a scrape lags our own dispatches by an interval, and our token counts miss other
  clients' requests. ``1 / (1 − u/2)`` is the stretch the fallback applies (a full cache doubles
  the cost: admission stalls, preemption); u is capped at 1.

So a candidate at 95 % KV usage costs 1.9× an idle twin, and a 4000 + 4000-token request in
flight weighs as much as its tokens' share of the cache, where the latency alone would count it
as one request like any other. The estimator's predictions themselves are not changed (other
strategies and policies read them as they are).

Without an estimator (documented fallback), the cost is the predicted *drain time*
(:func:`~._common.drain_time`): the same in-flight tokens, stretched by the scraped KV usage and
divided by the instance's capacity (GPUs × speed class). Ties go to the first candidate. Scores
are the costs min-max normalised (best 1, worst 0).
"""

from __future__ import annotations

from collections.abc import Sequence

from vllm_control_plane.core.interfaces import (
    RouteChoice,
    RouteRequest,
    RoutingContext,
    RoutingStrategy,
)
from vllm_control_plane.core.routing._common import (
    InflightTokens,
    drain_time,
    kv_capacity_tokens,
    minmax_scores,
    pick_min,
    scaled_scores,
)
from vllm_control_plane.types import ExecutionInstance


class LoadBalanced(RoutingStrategy):
    name = "load_balanced"

    def __init__(self, context: RoutingContext | None = None) -> None:
        super().__init__(context)
        self._inflight = InflightTokens()
        # 1 / KV capacity per instance object (static fields only): one look-up per candidate.
        self._per_slot: dict[str, tuple[ExecutionInstance, float]] = {}

    def _learn(self, inst: ExecutionInstance) -> tuple[ExecutionInstance, float]:
        """1 / KV capacity in tokens (0 when unknown: only the scraped usage counts)."""
        slots = kv_capacity_tokens(inst)
        entry = self._per_slot[inst.instance_id] = (inst, 1.0 / slots if slots > 0 else 0.0)
        return entry

    def select(self, req: RouteRequest, candidates: Sequence[ExecutionInstance]) -> RouteChoice:
        estimator = self.context.estimator
        tokens = req.prompt_tokens + req.output_tokens
        if estimator is not None:
            many = getattr(estimator, "predict_many", None)  # batched (and cached in the core)
            if many is not None:
                predictions = many(candidates, req.prompt_tokens, req.output_tokens)
            else:
                predictions = {
                    c.instance_id: estimator.predict(c, req.prompt_tokens, req.output_tokens)
                    for c in candidates
                }
            costs: dict[str, float] = {}
            best, best_u = candidates[0], 0.0
            lo = hi = -1.0
            ours_tokens, ours_count = self._inflight.tables()
            tokens_of, count_of, known = ours_tokens.get, ours_count.get, self._per_slot.get
            for c in candidates:  # one pass: the lowest cost (first on ties), the range
                iid = c.instance_id
                entry = known(iid)
                if entry is None or entry[0] is not c:
                    entry = self._learn(c)
                # u = max(scraped, inflight_work(c, ...) / KV capacity), inlined: a hot loop
                seen = c.num_requests_running + c.num_requests_waiting
                if c.active_requests > seen:
                    seen = c.active_requests
                n_ours = count_of(iid, 0)
                if n_ours:
                    ours = tokens_of(iid, 0)
                    work = ours + tokens
                    if seen > n_ours:
                        work += (seen - n_ours) * ours / n_ours
                else:
                    work = (seen + 1) * tokens
                u = work * entry[1]
                kv = c.kv_cache_usage
                if kv > u:
                    u = kv
                if u > 1.0:
                    u = 1.0
                elif u < 0.0:
                    u = 0.0
                v = predictions[iid].latency_ms / (1.0 - 0.5 * u)
                costs[iid] = v
                if lo < 0.0 or v < lo:
                    best, best_u, lo = c, u, v
                if v > hi:
                    hi = v
            p = predictions[best.instance_id]
            reason = (
                f"least predicted load: predicted latency {p.latency_ms:.0f} ms "
                f"(TTFT {p.ttft_ms:.0f} ms) x{1.0 / (1.0 - 0.5 * best_u):.2f} for KV "
                f"{best_u:.0%} (scraped or in-flight tokens) among {len(candidates)}"
            )
            return RouteChoice(best.instance_id, reason, scaled_scores(costs, lo, hi))
        best, costs = pick_min(candidates, lambda c: drain_time(c, self._inflight, tokens))
        reason = (
            f"least predicted load: drain {costs[best.instance_id]:.0f} tokens/capacity "
            f"among {len(candidates)} (no estimator)"
        )
        return RouteChoice(best.instance_id, reason, minmax_scores(costs))

    def on_dispatch(self, req: RouteRequest, instance_id: str) -> None:
        self._inflight.add(req, instance_id)

    def on_complete(self, request_id: str, instance_id: str, now: float) -> None:
        self._inflight.remove(request_id)

    def on_instance_removed(self, instance_id: str) -> None:
        self._inflight.forget_instance(instance_id)
        self._per_slot.pop(instance_id, None)

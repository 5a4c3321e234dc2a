"""``load_balanced``: send the request where it is predicted to finish soonest.

With an estimator in the context, the cost of a candidate is the estimator's predicted
end-to-end latency of this request there (queueing + prefill + decode, from the instance's live
state), so a fast, idle TP4 H100 beats a busy L4 for the right reasons.

Without one (documented fallback), the cost is the predicted *drain time*
(:func:`~._common.drain_time`): the tokens in flight on the instance — prompt + expected output
of every request we dispatched and have not seen complete, plus requests the engine reports
(running + waiting) that we know only by count — plus this request's tokens, stretched by KV
cache pressure and divided by the instance's capacity (GPUs × speed class). Ties go to the first
candidate. Scores are the costs min-max normalised (best 1, worst 0).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from vllm_control_plane.core.interfaces import (
    Prediction,
    RouteChoice,
    RouteRequest,
    RoutingContext,
    RoutingStrategy,
)
from vllm_control_plane.core.routing._common import (
    InflightTokens,
    drain_time,
    minmax_scores,
    pick_min,
    scaled_scores,
)
from vllm_control_plane.types import ExecutionInstance


def _by_latency(
    candidates: Sequence[ExecutionInstance], predictions: Mapping[str, Prediction]
) -> tuple[ExecutionInstance, dict[str, float], float, float]:
    """One pass: the candidate with the lowest predicted latency (the first on ties), every
    candidate's latency, and the lowest and highest of them (what the scores are scaled by)."""
    costs: dict[str, float] = {}
    best = candidates[0]
    lo = hi = predictions[best.instance_id].latency_ms
    for c in candidates:
        v = predictions[c.instance_id].latency_ms
        costs[c.instance_id] = v
        if v < lo:
            best, lo = c, v
        elif v > hi:
            hi = v
    return best, costs, lo, hi


class LoadBalanced(RoutingStrategy):
    name = "load_balanced"

    def __init__(self, context: RoutingContext | None = None) -> None:
        super().__init__(context)
        self._inflight = InflightTokens()

    def select(self, req: RouteRequest, candidates: Sequence[ExecutionInstance]) -> RouteChoice:
        estimator = self.context.estimator
        if estimator is not None:
            many = getattr(estimator, "predict_many", None)  # batched (and cached in the core)
            if many is not None:
                predictions = many(candidates, req.prompt_tokens, req.output_tokens)
            else:
                predictions = {
                    c.instance_id: estimator.predict(c, req.prompt_tokens, req.output_tokens)
                    for c in candidates
                }
            best, costs, lo, hi = _by_latency(candidates, predictions)
            p = predictions[best.instance_id]
            reason = (
                f"lowest predicted latency {p.latency_ms:.0f} ms "
                f"(TTFT {p.ttft_ms:.0f} ms) among {len(candidates)}"
            )
            return RouteChoice(best.instance_id, reason, scaled_scores(costs, lo, hi))
        tokens = req.prompt_tokens + req.output_tokens
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

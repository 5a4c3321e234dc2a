"""``predictive``: lowest predicted latency, with the prefill queue it has built itself in view.

Why: vLLM prefills FCFS, so a request's TTFT on an instance is the prefill work already queued
there plus its own. Scraped ``num_requests_waiting`` lags by a scrape interval, and a router
that leans on it herds: every request goes to the instance that *looked* idle until the next
scrape says otherwise (``load_balanced`` with an estimator does this under load). This strategy
keeps an exact, pure model of the backlog instead.

How it works, per candidate ``i``:

* **Prefill backlog** — a virtual FCFS prefill queue in time units: when a request is sent to
  ``i`` at ``t``, ``free_at[i] = max(t, free_at[i]) + prefill_s``; the backlog a new request
  faces is ``max(0, free_at[i] − now)``. Errors never accumulate: the backlog drains with time.
* **Prefill time** — the estimator's TTFT on an idle instance (``predict_floor``) for the
  prompt tokens *not* expected in ``i``'s prefix cache: a
  :class:`~vllm_control_plane.core.prefix_index.PrefixIndex` of the blocks sent to each instance
  gives the longest cached prefix, as in ``locality``. Cached tokens cost nothing, so prefix
  reuse and load are traded in one currency, seconds — no ad-hoc load bound.
* **Decode** — the estimator's TPOT at the instance's current batch × (expected output − 1).

Both are *service* times from the estimator's prior: its online calibration (observed /
predicted TTFT and TPOT per instance, when it offers ``calibration()``) is divided out, because
observed TTFTs include the very queueing the backlog model counts — calibrated prefill times
double-count load and make identical instances look several times apart, which herds traffic.

Cost = backlog + prefill + decode; the lowest wins (first candidate on ties) — when some
candidate holds part of the prompt in its prefix cache. When none does, the request goes to the
candidate least loaded relative to its cap (``active / max_concurrent_requests``; ties by cost):
measured on the Azure trace (`vcp bench`, docs/bench.md), choosing by predicted latency without
a cache difference met fewer SLOs than balancing in-flight requests (89.5 % against 95.9 % at
the same load) — even batch sizes keep every instance's TPOT in bounds, which a request's own
predicted latency does not weigh. Without an
estimator in the context it uses a default :class:`~vllm_control_plane.core.estimator.
RooflineEstimator` (uncalibrated). Scores: min-max of the costs.
"""

from __future__ import annotations

from collections.abc import Sequence

from vllm_control_plane.core.estimator import RooflineEstimator
from vllm_control_plane.core.interfaces import (
    Estimator,
    RouteChoice,
    RouteRequest,
    RoutingContext,
    RoutingStrategy,
)
from vllm_control_plane.core.prefix_index import DEFAULT_BLOCKS_PER_INSTANCE, PrefixIndex
from vllm_control_plane.core.routing._common import LastBlocks, minmax_scores
from vllm_control_plane.core.routing.locality import request_blocks
from vllm_control_plane.types import ExecutionInstance

BLOCK_TOKENS = 16  # the block size of RouteRequest.block_hashes


def _relative_load(inst: ExecutionInstance) -> float:
    return inst.active_requests / max(1, inst.max_concurrent_requests)


class Predictive(RoutingStrategy):
    name = "predictive"

    def __init__(
        self,
        context: RoutingContext | None = None,
        *,
        blocks_per_instance: int = DEFAULT_BLOCKS_PER_INSTANCE,
    ) -> None:
        super().__init__(context)
        self.estimator: Estimator = self.context.estimator or RooflineEstimator()
        self.index = PrefixIndex(blocks_per_instance)
        self._free_at: dict[str, float] = {}
        self._blocks = LastBlocks(request_blocks)
        self._prefill: dict[str, float] = {}  # the last select's prefill seconds per candidate
        self._chosen_costs: dict[str, float] = {}  # the last select's costs

    def _ratios(self, inst: ExecutionInstance) -> tuple[float, float]:
        """The estimator's (TTFT, TPOT) calibration of ``inst``, to divide out; (1, 1) if none."""
        calibration = getattr(self.estimator, "calibration", None)
        if calibration is None:
            return 1.0, 1.0
        ttft, tpot = calibration(inst.instance_id)
        return float(ttft), float(tpot)

    def _prefill_s(self, inst: ExecutionInstance, tokens: int, output: int, ratio: float) -> float:
        floor = getattr(self.estimator, "predict_floor", None)
        predict = floor or self.estimator.predict
        return float(predict(inst, max(1, tokens), output).ttft_ms) / 1e3 / ratio

    def _costs(
        self, req: RouteRequest, candidates: Sequence[ExecutionInstance]
    ) -> tuple[dict[str, float], dict[str, int], int]:
        """Predicted seconds to serve ``req`` on each candidate; cached blocks; prompt blocks."""
        blocks = self._blocks(req)
        by_id = {c.instance_id: c for c in candidates}
        depth = self.index.match(blocks, by_id) if blocks else {}
        out = req.output_tokens
        costs: dict[str, float] = {}
        for c in candidates:
            iid = c.instance_id
            cached = min(depth.get(iid, 0) * BLOCK_TOKENS, req.prompt_tokens - 1)
            r_ttft, r_tpot = self._ratios(c)
            prefill = self._prefill_s(c, req.prompt_tokens - cached, out, r_ttft)
            backlog = max(0.0, self._free_at.get(iid, req.now) - req.now)
            tpot = self.estimator.predict(c, req.prompt_tokens, out).tpot_ms / 1e3 / r_tpot
            self._prefill[iid] = prefill
            stalled = max(c.active_requests, c.num_requests_running)  # all wait for a prefill
            costs[iid] = backlog + prefill * (1 + stalled) + tpot * max(0, out - 1)
        return costs, depth, len(blocks)

    def select(self, req: RouteRequest, candidates: Sequence[ExecutionInstance]) -> RouteChoice:
        self._prefill = {}
        costs, depth, n_blocks = self._costs(req, candidates)
        self._chosen_costs = costs
        if any(depth.values()):
            best = min(candidates, key=lambda c: costs[c.instance_id]).instance_id
        else:  # nothing cached anywhere: balance load relative to capacity, ties by cost
            best = min(
                candidates, key=lambda c: (_relative_load(c), costs[c.instance_id])
            ).instance_id
        hit = depth.get(best, 0)
        reason = (
            f"lowest predicted latency {costs[best] * 1e3:.0f} ms "
            f"(prefill backlog {max(0.0, self._free_at.get(best, req.now) - req.now) * 1e3:.0f} ms"
            f", {hit}/{n_blocks} prompt blocks cached) among {len(candidates)}"
        )
        return RouteChoice(best, reason, minmax_scores(costs))

    def wait_for(
        self, req: RouteRequest, chosen: str, busy: Sequence[ExecutionInstance]
    ) -> str | None:
        """A busy instance whose predicted latency plus the wait for a free slot beats the
        chosen one's — in practice one holding much more of the prompt in its prefix cache.

        The wait for a slot is the instance's mean time between completions: its recent mean
        latency over the requests it runs (Little's law); an instance with no completed request
        yet has no estimate and is not waited for.
        """
        chosen_cost = self._chosen_costs.get(chosen)
        if chosen_cost is None:
            return None
        kept = dict(self._prefill)  # on_dispatch reads the chosen candidate's prefill
        costs, depth, _ = self._costs(req, busy)
        self._prefill = kept
        best, best_cost = None, chosen_cost
        for inst in busy:
            if inst.avg_latency_ms <= 0 or not depth.get(inst.instance_id):
                continue  # no estimate of the wait, or nothing cached there to wait for
            wait = inst.avg_latency_ms / 1e3 / max(1, inst.active_requests)
            cost = costs[inst.instance_id] + wait
            if cost < best_cost:
                best, best_cost = inst.instance_id, cost
        return best

    def on_dispatch(self, req: RouteRequest, instance_id: str) -> None:
        prefill = self._prefill.get(instance_id)
        if prefill is None:  # dispatched without our select (e.g. after a live switch)
            prefill = 0.0
        start = max(req.now, self._free_at.get(instance_id, req.now))
        self._free_at[instance_id] = start + prefill
        blocks = self._blocks(req)
        if blocks:
            self.index.insert(instance_id, blocks)

    def on_instance_removed(self, instance_id: str) -> None:
        self._free_at.pop(instance_id, None)
        self.index.remove_instance(instance_id)

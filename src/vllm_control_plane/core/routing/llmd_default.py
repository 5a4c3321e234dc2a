"""``llmd_default`` (baseline): the llm-d / Gateway API Inference Extension endpoint picker's
default scheduling profile — three scorers, weighted sum, max-score picker.

* ``prefix-cache-scorer`` (weight 3): the prompt's bytes are cut into 64-character blocks
  (vLLM's 16-token block × ~4 characters/token), at most 256 blocks, a shorter trailing block
  ignored; block hashes are chained, the first seeded with the model name. Walking the blocks in
  order, every server holding block i gains 1 until a block nobody holds; score = gained /
  request blocks. After the pick the request's blocks are added to the pick's LRU (31 250 blocks
  per server by default).
* ``queue-scorer`` (weight 2): (max waiting − own waiting) / (max − min) over the candidates'
  scraped ``vllm:num_requests_waiting``; 1.0 for everyone when all are equal.
* ``kv-cache-utilization-scorer`` (weight 2): 1 − scraped KV-cache usage.
* ``max-score-picker``: highest weighted sum; ties broken uniformly at random (context rng).

Scores reported: the weighted sum divided by the total weight (7), so in [0, 1].
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from vllm_control_plane.core.interfaces import (
    RouteChoice,
    RouteRequest,
    RoutingContext,
    RoutingStrategy,
)
from vllm_control_plane.core.prefix_index import PrefixIndex
from vllm_control_plane.core.routing._common import LastBlocks, text_block_hashes
from vllm_control_plane.types import ExecutionInstance

BLOCK_CHARS = 64  # DefaultBlockSize (and CacheBlockSize 16 × averageCharactersPerToken 4)
MAX_PREFIX_BLOCKS = 256  # DefaultMaxPrefixBlocks
LRU_CAPACITY_PER_SERVER = 31250  # DefaultLRUCapacityPerServer
WEIGHTS = {"prefix": 3.0, "queue": 2.0, "kv": 2.0}


def _blocks(req: RouteRequest) -> tuple[int, ...]:
    seed = req.request.model_name or ""
    return text_block_hashes(req.prompt_text, BLOCK_CHARS, seed, MAX_PREFIX_BLOCKS)


class LlmdDefault(RoutingStrategy):
    name = "llmd_default"

    def __init__(self, context: RoutingContext | None = None) -> None:
        super().__init__(context)
        self.index = PrefixIndex(LRU_CAPACITY_PER_SERVER)
        self._blocks = LastBlocks(_blocks)

    def _prefix_scores(self, blocks: tuple[int, ...], ids: list[str]) -> dict[str, float]:
        gained: dict[str, int] = {}
        run_holders: Collection[str] = ()
        run = 0
        for h in blocks:
            holders = self.index.holders(h)
            if not holders:
                break
            if holders == run_holders:  # a shared prefix: the same holders block after block
                run += 1
                continue
            for iid in run_holders:
                gained[iid] = gained.get(iid, 0) + run
            run_holders, run = holders, 1
        for iid in run_holders:
            gained[iid] = gained.get(iid, 0) + run
        total = len(blocks)
        return {iid: (gained.get(iid, 0) / total if total else 0.0) for iid in ids}

    def select(self, req: RouteRequest, candidates: Sequence[ExecutionInstance]) -> RouteChoice:
        ids = [c.instance_id for c in candidates]
        prefix = self._prefix_scores(self._blocks(req), ids)
        waiting = [c.num_requests_waiting for c in candidates]
        lo, hi = min(waiting), max(waiting)
        total_weight = sum(WEIGHTS.values())
        scores: dict[str, float] = {}
        for c, w in zip(candidates, waiting, strict=True):
            queue = 1.0 if hi == lo else (hi - w) / (hi - lo)
            kv = 1.0 - min(1.0, max(0.0, c.kv_cache_usage))
            s = WEIGHTS["prefix"] * prefix[c.instance_id] + WEIGHTS["queue"] * queue
            scores[c.instance_id] = (s + WEIGHTS["kv"] * kv) / total_weight
        top = max(scores.values())
        tied = [iid for iid in ids if scores[iid] == top]
        pick = tied[self.context.rng.randrange(len(tied))] if len(tied) > 1 else tied[0]
        reason = (
            f"max score {top:.3f} (prefix {prefix[pick]:.2f}, "
            f"weights prefix 3 / queue 2 / kv 2), {len(tied)} tied"
        )
        return RouteChoice(pick, reason, scores)

    def on_dispatch(self, req: RouteRequest, instance_id: str) -> None:
        blocks = self._blocks(req)
        if blocks:
            self.index.insert(instance_id, blocks, tail_first=False)

    def on_instance_removed(self, instance_id: str) -> None:
        self.index.remove_instance(instance_id)

"""``locality``: send a prompt where its prefix is already cached, unless that instance is busy.

An approximate :class:`~vllm_control_plane.core.prefix_index.PrefixIndex` remembers which blocks
each instance was sent (chained 16-token block hashes from the request; for a request that has
text but no hashes, chained 64-character chunks — 16 tokens at ~4 characters each). Per request:

1. Longest cached prefix per candidate, in blocks: O(matched blocks), independent of index size.
2. Among the candidates with the longest match (> 0 blocks), the least loaded wins — unless it
   is *overloaded*: its in-flight count would exceed ``max((1 + ε) × fair, fair + slack)``,
   ``fair = (fleet in-flight + 1) × capacity share`` (bounded load; ε = 0.5: prefix reuse is
   worth some imbalance; slack = 8 requests × capacity / mean capacity, so a nearly idle fleet
   does not scatter a prefix — our choice, of the order of the absolute margin AIBrix's
   prefix-cache router tolerates: 16 running requests by default). Then the next-best match
   that is not overloaded, down to no match at all.
3. No usable match: the least loaded candidate (drain time, as ``load_balanced`` without an
   estimator). Its blocks are indexed on dispatch, so a hot shared prefix spreads to a second
   instance only when the first is over the bound, and later requests split among the holders.

Scores are each candidate's cached share of the prompt (matched blocks / prompt blocks).
"""

from __future__ import annotations

from collections.abc import Sequence

from vllm_control_plane.core.interfaces import (
    RouteChoice,
    RouteRequest,
    RoutingContext,
    RoutingStrategy,
)
from vllm_control_plane.core.prefix_index import DEFAULT_BLOCKS_PER_INSTANCE, PrefixIndex
from vllm_control_plane.core.routing._common import (
    InflightTokens,
    LastBlocks,
    capacity,
    drain_time,
    over_bound,
    text_block_hashes,
)
from vllm_control_plane.types import ExecutionInstance

TEXT_CHUNK_CHARS = 64  # 16 tokens × ~4 characters per token


def request_blocks(req: RouteRequest) -> tuple[int, ...]:
    """The request's block hashes, or chained text-chunk hashes when only text is known."""
    if req.block_hashes:
        return req.block_hashes
    return text_block_hashes(req.prompt_text, TEXT_CHUNK_CHARS) if req.prompt_text else ()


class Locality(RoutingStrategy):
    name = "locality"

    def __init__(
        self,
        context: RoutingContext | None = None,
        *,
        epsilon: float = 0.5,
        slack: float = 8.0,
        blocks_per_instance: int = DEFAULT_BLOCKS_PER_INSTANCE,
    ) -> None:
        super().__init__(context)
        if epsilon < 0:
            raise ValueError(f"epsilon must be >= 0, got {epsilon}")
        self.epsilon = epsilon
        self.slack = slack
        self.index = PrefixIndex(blocks_per_instance)
        self._inflight = InflightTokens()
        self._blocks = LastBlocks(request_blocks)

    def select(self, req: RouteRequest, candidates: Sequence[ExecutionInstance]) -> RouteChoice:
        blocks = self._blocks(req)
        by_id = {c.instance_id: c for c in candidates}
        depth = self.index.match(blocks, by_id) if blocks else {}
        scores = {iid: d / len(blocks) for iid, d in depth.items()}
        tokens = req.prompt_tokens + req.output_tokens
        pos = {iid: k for k, iid in enumerate(by_id)}

        def load(iid: str) -> float:
            return drain_time(by_id[iid], self._inflight, tokens)

        fleet = sum(c.active_requests for c in candidates)
        total_cap = sum(capacity(c) for c in candidates)
        # Best match first; among equal matches the least loaded, then candidate order.
        order = sorted(depth, key=lambda iid: (-depth[iid], load(iid), pos[iid]))
        for skipped, iid in enumerate(order):
            inst = by_id[iid]
            share = capacity(inst) / total_cap
            slack = self.slack * share * len(candidates)
            if not over_bound(inst, fleet, share, self.epsilon, slack):
                note = f", {skipped} better-matched over bound" if skipped else ""
                reason = f"prefix match {depth[iid]}/{len(blocks)} blocks{note}"
                return RouteChoice(iid, reason, scores)
        best = min(candidates, key=lambda c: load(c.instance_id))
        reason = "no cached prefix" if not depth else "prefix holders overloaded"
        return RouteChoice(best.instance_id, f"{reason}: least loaded", scores)

    def on_dispatch(self, req: RouteRequest, instance_id: str) -> None:
        self._inflight.add(req, instance_id)
        blocks = self._blocks(req)
        if blocks:
            self.index.insert(instance_id, blocks)

    def on_complete(self, request_id: str, instance_id: str, now: float) -> None:
        self._inflight.remove(request_id)

    def on_instance_removed(self, instance_id: str) -> None:
        self._inflight.forget_instance(instance_id)
        self.index.remove_instance(instance_id)

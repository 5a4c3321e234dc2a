"""An approximate, bounded index of which instance holds which prompt blocks in its prefix cache.

How it works: each instance has an LRU of block hashes (capacity in blocks); a reverse map sends
each hash to the set of instances holding it. Hashes are *chained* (block i's hash covers blocks
0..i), so "instance X holds block i" implies it held the whole prefix when it was inserted; a
longest-prefix match walks the request's blocks in order and stops at the first block no
remaining candidate holds. Cost is O(blocks matched × holders), independent of the index size.

The index is approximate: it records where the router *sent* prompts, not what the engine kept.
Bounding each instance's LRU by roughly its KV capacity keeps it from claiming blocks the engine
has long evicted. Inserting a prompt's blocks tail first leaves its head most recently used, as
vLLM does when it frees a request's blocks (the tail is evicted first).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Sequence

# ≈ the KV cache of an 80 GB GPU serving an 8B model (~500K tokens) in 16-token blocks.
DEFAULT_BLOCKS_PER_INSTANCE = 32768


class PrefixIndex:
    """Per-instance LRU sets of block hashes with a hash → holders reverse map."""

    def __init__(self, blocks_per_instance: int = DEFAULT_BLOCKS_PER_INSTANCE) -> None:
        if blocks_per_instance < 1:
            raise ValueError(f"blocks_per_instance must be >= 1, got {blocks_per_instance}")
        self.blocks_per_instance = blocks_per_instance
        self._lru: dict[str, OrderedDict[int, None]] = {}
        self._holders: dict[int, set[str]] = {}

    def insert(self, instance_id: str, hashes: Sequence[int], tail_first: bool = True) -> None:
        """Record that ``instance_id`` now caches these blocks (touching them in its LRU)."""
        lru = self._lru.setdefault(instance_id, OrderedDict())
        for h in reversed(hashes) if tail_first else hashes:
            if h in lru:
                lru.move_to_end(h)
                continue
            lru[h] = None
            self._holders.setdefault(h, set()).add(instance_id)
            if len(lru) > self.blocks_per_instance:
                self._drop(instance_id, lru.popitem(last=False)[0])

    def holders(self, block_hash: int) -> Collection[str]:
        """Instances that hold this block (empty if none)."""
        return self._holders.get(block_hash, ())

    def match(self, hashes: Sequence[int], candidates: Collection[str]) -> dict[str, int]:
        """Longest cached prefix, in blocks, of each candidate that holds at least one block.

        ``candidates`` should support fast ``in`` (a set or a dict keyed by instance id).
        """
        depth: dict[str, int] = {}
        first = self._holders.get(hashes[0]) if hashes else None
        if not first:
            return depth
        alive = {iid for iid in first if iid in candidates}
        n = 1
        while alive and n < len(hashes):
            holders = self._holders.get(hashes[n])
            if holders is None:
                break
            if not alive <= holders:  # someone's prefix ends here (the rare case)
                still = alive & holders
                for gone in alive - still:
                    depth[gone] = n
                alive = still
            n += 1
        for iid in alive:
            depth[iid] = n
        return depth

    def remove_instance(self, instance_id: str) -> None:
        lru = self._lru.pop(instance_id, None)
        for h in lru or ():
            self._drop(instance_id, h)

    def size(self, instance_id: str) -> int:
        """Blocks currently attributed to ``instance_id``."""
        lru = self._lru.get(instance_id)
        return len(lru) if lru is not None else 0

    def _drop(self, instance_id: str, h: int) -> None:
        holders = self._holders.get(h)
        if holders is not None:
            holders.discard(instance_id)
            if not holders:
                del self._holders[h]

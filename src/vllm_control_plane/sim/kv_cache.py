"""KV cache: pool size, block hashing and a block pool with prefix caching (vLLM v1 style).

How it works: the pool has ``num_blocks`` blocks of ``block_size`` tokens. A request holds a
:class:`BlockTable`: blocks registered under a prefix hash (shareable, reference-counted) and
anonymous blocks (its private partial/decode blocks). Blocks nobody holds sit in one LRU *free
queue*, like vLLM's ``FreeKVCacheBlockQueue``: allocation pops from the head, and a cached block
popped there is evicted (its hash forgotten). A prefix hit on a cached block with no holder takes
it out of the free queue ("touch"). Freed blocks go to the tail in reverse order, so a request's
tail blocks are evicted first. Anonymous free blocks carry no identity, so the queue stores them
as counted runs; this keeps the pool O(1) per block without block ids.

The pool only answers "fits / does not fit"; the scheduler owns the reaction (preemption).

Hashes are chained: block *i*'s hash covers blocks 0..*i*, so equal hashes mean equal prefixes.
They are deterministic across processes (BLAKE2b / integer mixing, never Python's salted
``hash``).
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from collections.abc import Iterable, Sequence

from vllm_control_plane.sim.profiles import GPUProfile, ModelProfile

_MASK64 = (1 << 64) - 1


def num_gpu_blocks(
    model: ModelProfile,
    gpu: GPUProfile,
    *,
    tp: int = 1,
    pp: int = 1,
    gpu_memory_utilization: float = 0.9,
    block_size: int = 16,
) -> int:
    """KV blocks that fit, as vLLM sizes the cache at start-up (the minimum over devices).

    Per device: ``mem · utilization − weights/(tp·pp) − reserved`` divided by one block's bytes
    on that device (its share of layers and KV heads). PP therefore adds capacity twice: fewer
    weights per device and fewer layers per block. A profile with a fixed ``kv_cache_bytes``
    (vLLM-CPU) uses that instead of the memory formula.
    """
    block_bytes = block_size * model.kv_bytes_per_token_per_gpu(tp, pp)
    if gpu.kv_cache_bytes is not None:
        free = gpu.kv_cache_bytes
    else:
        free = gpu.mem_bytes * gpu_memory_utilization - model.weight_bytes / (tp * pp)
        free -= gpu.reserved_bytes
    return max(0, int(free // block_bytes))


def hash_token_blocks(token_ids: Sequence[int], block_size: int = 16) -> tuple[int, ...]:
    """Chained 64-bit hashes of the *full* blocks of ``token_ids`` (a partial tail is skipped)."""
    out: list[int] = []
    parent = b"\x00" * 8
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        h = hashlib.blake2b(parent, digest_size=8)
        h.update(",".join(map(str, token_ids[start : start + block_size])).encode())
        parent = h.digest()
        out.append(int.from_bytes(parent, "little"))
    return tuple(out)


hash_blocks = hash_token_blocks  # the name sim/types.py refers to


def _mix(parent: int, value: int) -> int:
    """splitmix64-style chaining step: cheap, well spread, deterministic."""
    z = (parent * 0x9E3779B97F4A7C15 + value + 0x632BE59BD9B4E019) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def hash_trace_blocks(
    ids: Iterable[int],
    tokens_per_id: int = 512,
    block_size: int = 16,
    num_tokens: int | None = None,
) -> tuple[int, ...]:
    """Expand trace block ids (Mooncake: 512 tokens each) into chained ``block_size`` hashes.

    Each id becomes ``tokens_per_id // block_size`` blocks, chained through the whole prompt, so
    two prompts share block hashes exactly as far as their id sequences agree. ``num_tokens``
    (the prompt length) caps the result at its full blocks.
    """
    per_id = max(1, tokens_per_id // block_size)
    limit = math.inf if num_tokens is None else num_tokens // block_size
    out: list[int] = []
    h = 0
    for block_id in ids:
        base = (block_id + 1) * per_id  # distinct inputs for every (id, sub-block)
        for k in range(per_id):
            if len(out) >= limit:
                return tuple(out)
            h = _mix(h, base + k)
            out.append(h)
    return tuple(out)


class BlockTable:
    """The blocks one request holds: shared hashed blocks plus private anonymous ones."""

    __slots__ = ("hashed", "num_anon", "registered_upto")

    def __init__(self) -> None:
        self.hashed: list[int] = []  # cache hashes held (reference-counted in the pool)
        self.num_anon = 0  # private blocks (partial prompt blocks, decode blocks, duplicates)
        self.registered_upto = 0  # prompt blocks below this index are hashed or were tried

    @property
    def num_blocks(self) -> int:
        return len(self.hashed) + self.num_anon


class KVCachePool:
    """Block accounting with an LRU free queue and a prefix cache of hashed blocks."""

    __slots__ = ("_anon_key", "_free", "_ref", "block_size", "free_blocks", "num_blocks")

    def __init__(self, num_blocks: int, block_size: int = 16) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError("num_blocks and block_size must be >= 1")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.free_blocks = num_blocks  # allocatable: empty blocks + unheld cached blocks
        # LRU free queue: key >= 0 is a cached block's hash (count 1); key < 0 an anonymous run.
        self._free: OrderedDict[int, int] = OrderedDict({-1: num_blocks})
        self._anon_key = -1
        self._ref: dict[int, int] = {}  # hash -> holders; every cached block (held or free)

    # -- queries ---------------------------------------------------------------------------
    @property
    def used_blocks(self) -> int:
        return self.num_blocks - self.free_blocks

    def usage(self) -> float:
        """Share of blocks held by requests (vLLM's ``kv_cache_usage_perc``)."""
        return self.used_blocks / self.num_blocks

    @property
    def num_cached_blocks(self) -> int:
        return len(self._ref)

    def is_cached(self, block_hash: int) -> bool:
        return block_hash in self._ref

    def match_prefix(self, hashes: Sequence[int], max_blocks: int) -> int:
        """How many leading blocks of ``hashes`` are cached (at most ``max_blocks``)."""
        ref = self._ref
        n = 0
        for h in hashes[:max_blocks]:
            if h not in ref:
                break
            n += 1
        return n

    def fits(self, table: BlockTable, required: int, hits: Sequence[int] = ()) -> bool:
        """Could ``table`` grow to ``required`` blocks, first taking the cached ``hits``?"""
        new = required - table.num_blocks - len(hits)
        touched = sum(1 for h in hits if self._ref[h] == 0)  # hits that leave the free queue
        return max(0, new) + touched <= self.free_blocks

    # -- mutations -------------------------------------------------------------------------
    def allocate(self, table: BlockTable, required: int, hits: Sequence[int] = ()) -> bool:
        """Grow ``table`` to ``required`` blocks (taking ``hits`` first); False if it can't."""
        if not self.fits(table, required, hits):
            return False
        for h in hits:
            self._hold(h)
        table.hashed.extend(hits)
        table.registered_upto = max(table.registered_upto, len(table.hashed))
        new = required - table.num_blocks
        if new > 0:
            self.take_anonymous(new)
            table.num_anon += new
        return True

    def _hold(self, h: int) -> None:
        if self._ref[h] == 0:
            del self._free[h]
            self.free_blocks -= 1
        self._ref[h] += 1

    def take_anonymous(self, n: int) -> None:
        """Pop ``n`` blocks off the free-queue head, evicting cached ones found there."""
        self.free_blocks -= n
        free, ref = self._free, self._ref
        while n > 0:
            key, count = free.popitem(last=False)
            if key >= 0:
                del ref[key]  # evicted: the hash is forgotten
                n -= 1
            elif count > n:
                free[key] = count - n  # put the rest of the run back at the head
                free.move_to_end(key, last=False)
                n = 0
            else:
                n -= count

    def register(self, table: BlockTable, upto: int, hashes: Sequence[int]) -> None:
        """Publish the table's full prompt blocks below index ``upto`` under their hashes.

        An anonymous block becomes a cached one; a hash already cached (computed concurrently
        by another request) is left anonymous, as vLLM does not cache duplicates.
        """
        ref = self._ref
        end = min(upto, len(hashes))
        for i in range(table.registered_upto, end):
            h = hashes[i]
            if h not in ref and table.num_anon > 0:
                ref[h] = 1
                table.hashed.append(h)
                table.num_anon -= 1
        table.registered_upto = max(table.registered_upto, end)

    def free(self, table: BlockTable) -> None:
        """Release every block of ``table``; tail blocks go first so they are evicted first."""
        free, ref = self._free, self._ref
        if table.num_anon:
            self._anon_key -= 1
            free[self._anon_key] = table.num_anon
            self.free_blocks += table.num_anon
        for h in reversed(table.hashed):
            n = ref[h] - 1
            ref[h] = n
            if n == 0:
                free[h] = 1
                self.free_blocks += 1
        table.hashed = []
        table.num_anon = 0
        table.registered_upto = 0

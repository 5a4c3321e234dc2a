"""KV block pool and block hashing: LRU free queue, prefix reuse, determinism."""

from __future__ import annotations

import subprocess
import sys

from vllm_control_plane.sim.kv_cache import (
    BlockTable,
    KVCachePool,
    hash_blocks,
    hash_token_blocks,
    hash_trace_blocks,
)


def test_token_hashes_are_chained_over_full_blocks() -> None:
    a = hash_token_blocks(list(range(40)), 16)
    b = hash_token_blocks([*range(32), 99, 98], 16)
    assert len(a) == 2 and a == b  # the partial tail block is not hashed
    c = hash_token_blocks([7, *range(1, 40)], 16)
    assert c[0] != a[0] and c[1] != a[1]  # a change in block 0 changes every later hash
    assert hash_blocks is hash_token_blocks


def test_hashes_are_deterministic_across_processes() -> None:
    code = (
        "from vllm_control_plane.sim.kv_cache import hash_token_blocks, hash_trace_blocks;"
        "print(hash_token_blocks(list(range(32))), hash_trace_blocks([5, 6], num_tokens=600)[-1])"
    )
    outs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": seed},
        ).stdout
        for seed in ("1", "2")
    }
    assert len(outs) == 1


def test_trace_ids_expand_to_32_blocks_and_share_exactly_their_prefix() -> None:
    x = hash_trace_blocks([1, 2, 3])
    y = hash_trace_blocks([1, 2, 4])
    z = hash_trace_blocks([0, 2, 3])
    assert len(x) == 96 and len(set(x)) == 96
    assert x[:64] == y[:64] and x[64] != y[64]
    assert not set(x) & set(z)  # chained: a different first id shares nothing
    assert len(hash_trace_blocks([1, 2, 3], num_tokens=700)) == 700 // 16
    assert len(hash_trace_blocks([1], tokens_per_id=64, block_size=16)) == 4


def test_allocate_and_free_account_every_block() -> None:
    pool = KVCachePool(10, 16)
    t = BlockTable()
    assert pool.allocate(t, 4) and pool.free_blocks == 6 and pool.usage() == 0.4
    assert not pool.allocate(BlockTable(), 7)  # does not fit: nothing changes
    assert pool.free_blocks == 6
    pool.free(t)
    assert pool.free_blocks == 10 and t.num_blocks == 0


def test_registered_blocks_are_hit_and_touched_out_of_the_free_queue() -> None:
    pool = KVCachePool(8, 4)
    hashes = (11, 12, 13)
    a = BlockTable()
    pool.allocate(a, 3)
    pool.register(a, 3, hashes)
    assert pool.num_cached_blocks == 3 and a.num_anon == 0
    assert pool.match_prefix(hashes, 3) == 3 and pool.match_prefix((11, 99, 13), 3) == 1
    b = BlockTable()
    assert pool.allocate(b, 3, hits=hashes[:2])  # 2 shared + 1 new
    assert pool.free_blocks == 8 - 4
    pool.free(a)
    pool.free(b)
    assert pool.free_blocks == 8 and pool.num_cached_blocks == 3  # cached, but evictable
    c = BlockTable()
    assert pool.allocate(c, 2, hits=(11, 12))  # touching unheld cached blocks takes them
    assert pool.free_blocks == 6


def test_eviction_is_lru_and_tail_blocks_go_first() -> None:
    pool = KVCachePool(4, 4)
    a = BlockTable()
    pool.allocate(a, 4)
    pool.register(a, 4, (1, 2, 3, 4))
    pool.free(a)  # free queue: 4, 3, 2, 1 (tail blocks first)
    pool.allocate(BlockTable(), 1)
    assert not pool.is_cached(4) and pool.is_cached(1)
    assert pool.match_prefix((1, 2, 3, 4), 4) == 3
    pool.allocate(BlockTable(), 2)
    assert pool.match_prefix((1, 2, 3, 4), 4) == 1


def test_duplicate_hash_stays_private() -> None:
    pool = KVCachePool(8, 4)
    a, b = BlockTable(), BlockTable()
    pool.allocate(a, 2)
    pool.allocate(b, 2)
    pool.register(a, 2, (5, 6))
    pool.register(b, 2, (5, 6))
    assert b.num_anon == 2 and b.hashed == []
    pool.free(a)
    pool.free(b)
    assert pool.free_blocks == 8 and pool.num_cached_blocks == 2


def test_fits_counts_unheld_hits_as_allocations() -> None:
    pool = KVCachePool(4, 4)
    a = BlockTable()
    pool.allocate(a, 2)
    pool.register(a, 2, (1, 2))
    pool.free(a)
    other = BlockTable()
    pool.allocate(other, 2)  # 2 empty blocks used; queue now holds the 2 cached ones
    assert pool.fits(BlockTable(), 2, hits=(1, 2))
    assert not pool.fits(BlockTable(), 3, hits=(1, 2))

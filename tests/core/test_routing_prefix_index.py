"""PrefixIndex: bounded LRU per instance, longest-prefix match, cost independent of its size."""

from __future__ import annotations

from routing_testkit import chained, make_fleet, make_request

from vllm_control_plane.core.prefix_index import PrefixIndex
from vllm_control_plane.core.routing import get_strategy


def test_match_depth_is_the_contiguous_prefix() -> None:
    idx = PrefixIndex(100)
    a = chained(range(10))
    idx.insert("x", a[:6])
    idx.insert("y", a)
    assert idx.match(a, ["x", "y", "z"]) == {"x": 6, "y": 10}
    assert idx.match(chained([99, *range(10)]), ["x", "y"]) == {}


def test_lru_bound_evicts_tail_blocks_first() -> None:
    idx = PrefixIndex(8)
    a, b = chained(range(6)), chained(range(100, 106))
    idx.insert("x", a)
    idx.insert("x", b)  # 12 blocks > 8: a's 4 least recent (its tail) go
    assert idx.size("x") == 8
    assert idx.match(a, ["x"]) == {"x": 2}
    assert idx.match(b, ["x"]) == {"x": 6}


def test_remove_instance_forgets_its_blocks() -> None:
    idx = PrefixIndex(100)
    a = chained(range(5))
    idx.insert("x", a)
    idx.insert("y", a)
    idx.remove_instance("x")
    assert idx.match(a, ["x", "y"]) == {"y": 5}
    assert idx.size("x") == 0
    assert list(idx.holders(a[0])) == ["y"]


class CountingDict(dict):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lookups = 0

    def get(self, key, default=None):
        self.lookups += 1
        return super().get(key, default)


def test_locality_decision_cost_does_not_grow_with_index_size() -> None:
    strategy = get_strategy("locality")
    fleet = make_fleet(64, max_concurrent_requests=10_000)
    for k in range(2000):  # ~66K indexed blocks across the fleet
        strategy.on_dispatch(
            make_request(block_hashes=chained([(k, b) for b in range(33)])), f"i{k % 64}"
        )
    spy = CountingDict(strategy.index._holders)
    strategy.index._holders = spy
    req = make_request(block_hashes=chained([(7, b) for b in range(33)]))
    strategy.select(req, fleet)
    assert spy.lookups <= len(req.block_hashes)

"""Baseline: SGLang router ``cache_aware`` and its approximate radix tree."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from routing_testkit import make_fleet, make_request

from vllm_control_plane.core.routing import get_strategy
from vllm_control_plane.core.routing._radix_tree import RadixTree
from vllm_control_plane.core.routing.sglang_cache_aware import SglangCacheAware

DOC = "The quick brown fox jumps over the lazy dog. " * 10


def warmed(loads: tuple[int, int]):
    """Two workers; w0 was sent DOC; in-flight loads as given."""
    strategy = get_strategy("sglang_cache_aware")
    fleet = make_fleet(2, max_concurrent_requests=10_000)
    strategy.on_dispatch(make_request(prompt_text=DOC), "i0")
    fleet[0].active_requests, fleet[1].active_requests = loads
    return strategy, fleet


def test_switches_to_shortest_queue_only_when_both_thresholds_are_crossed() -> None:
    cases = {
        (100, 30): "i1",  # 70 > 64 and 100 > 45: imbalanced → shortest queue
        (90, 30): "i0",  # 60 ≤ 64: balanced → cache hit on i0
        (300, 210): "i0",  # 90 > 64 but 300 ≤ 315: balanced
        (70, 0): "i1",  # 70 > 64 and 70 > 0
    }
    for loads, want in cases.items():
        strategy, fleet = warmed(loads)
        choice = strategy.select(make_request(prompt_text=DOC), fleet)
        assert choice.instance_id == want, (loads, choice.reason)


def test_cache_threshold_then_smallest_tree() -> None:
    strategy, fleet = warmed((0, 0))
    strategy.on_dispatch(make_request(prompt_text="x" * 1000), "i1")  # i1's tree is bigger
    hit = DOC[:31] + "~" * 69  # 31 % matched > 30 %
    miss = DOC[:29] + "~" * 71  # 29 %
    assert strategy.select(make_request(prompt_text=hit), fleet).instance_id == "i0"
    strategy.on_dispatch(make_request(prompt_text="y" * 5000), "i0")  # now i0 is bigger
    assert strategy.select(make_request(prompt_text=miss), fleet).instance_id == "i1"
    assert strategy.select(make_request(prompt_text=hit), fleet).instance_id == "i0"


def test_lru_trim_after_the_eviction_interval() -> None:
    strategy = SglangCacheAware(max_tree_size=500)
    fleet = make_fleet(2)
    old, new = "old context " * 40, "new context " * 40  # 480 chars each
    strategy.select(make_request(prompt_text=old, now=0.0), fleet)
    strategy.on_dispatch(make_request(prompt_text=old, now=0.0), "i0")
    strategy.on_dispatch(make_request(prompt_text=new, now=60.0), "i0")
    assert strategy.tree.char_count["i0"] > 500
    strategy.select(make_request(prompt_text="", now=119.0), fleet)  # not yet
    assert strategy.tree.char_count["i0"] > 500
    strategy.select(make_request(prompt_text="", now=121.0), fleet)
    assert strategy.tree.char_count["i0"] <= 500
    assert strategy.tree.match(new)[1] == len(new)  # most recent kept
    assert strategy.tree.match(old)[1] < len(old)  # least recent trimmed


@settings(max_examples=60)
@given(
    st.lists(
        st.tuples(st.text(alphabet="abc", max_size=12), st.sampled_from(["t1", "t2", "t3"])),
        max_size=25,
    ),
    st.integers(min_value=0, max_value=20),
)
def test_tree_char_counts_stay_exact_through_inserts_and_evictions(ops, max_chars) -> None:
    tree = RadixTree()
    for k, (text, tenant) in enumerate(ops):
        tree.insert(text, tenant, float(k))
    assert tree.char_count == recount(tree)
    for text, _ in ops:  # every inserted text is fully matchable
        assert tree.match(text)[1] == len(text)
    tree.evict(max_chars)
    assert tree.char_count == recount(tree)
    assert all(n <= max_chars for n in tree.char_count.values())
    tree.remove_tenant("t1")
    assert "t1" not in recount(tree)


def recount(tree: RadixTree) -> dict[str, int]:
    counts: dict[str, int] = {}
    stack = [tree.root]
    while stack:
        node = stack.pop()
        stack.extend(node.children.values())
        for t in node.tenants:
            counts[t] = counts.get(t, 0) + len(node.text)
    return {t: n for t, n in counts.items() if n or t in tree.char_count}

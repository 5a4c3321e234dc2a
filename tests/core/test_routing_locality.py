"""locality: a shared prefix stays on one instance until that instance is overloaded."""

from __future__ import annotations

import random
from collections import Counter

from routing_testkit import FleetDriver, chained, make_fleet, make_request, shared_prefix_prompts

from vllm_control_plane.core.routing import get_strategy


def prompt(system: int, suffix: int, system_blocks: int = 32) -> tuple[int, ...]:
    return chained([("sys", system, b) for b in range(system_blocks)] + [("q", suffix)])


def test_shared_prefix_sticks_then_spreads_when_overloaded() -> None:
    fleet = make_fleet(4, max_concurrent_requests=1000)
    driver = FleetDriver(get_strategy("locality"), fleet)
    first = driver.dispatch(make_request(block_hashes=prompt(0, 0)))
    # Light load (each request finishes before the next): one instance serves them all.
    for k in range(1, 30):
        rid = f"light{k}"
        assert driver.dispatch(make_request(request_id=rid, block_hashes=prompt(0, k))) == first
        driver.complete(rid)
    # Heavy load (nothing finishes): the holder fills to its bound, then others take over.
    heavy = [driver.dispatch(make_request(block_hashes=prompt(0, 100 + k))) for k in range(40)]
    # It holds 1 (never completed) + k; over once 2 + k > ceil((2 + k) / 4 + 8), i.e. k = 10.
    assert heavy[:10] == [first] * 10
    assert heavy[10] != first
    assert len(Counter(heavy)) >= 3
    loads = [i.active_requests for i in fleet]
    mean = sum(loads) / 4
    assert max(loads) <= max(1.5 * mean, mean + 8) + 1  # ε = 0.5, slack = 8


def test_spill_placements_are_indexed_and_become_holders() -> None:
    strategy = get_strategy("locality")
    fleet = make_fleet(3, max_concurrent_requests=1000)
    driver = FleetDriver(strategy, fleet)
    for k in range(30):
        driver.dispatch(make_request(block_hashes=prompt(1, k)))
    holders = {iid for iid, d in strategy.index.match(prompt(1, 999), ["i0", "i1", "i2"]).items()}
    assert len(holders) >= 2  # the prefix now lives on more than one instance
    driver.complete_all()
    # Once idle, new requests for that prefix go only to instances that hold it.
    for k in range(10):
        rid = f"after{k}"
        assert (
            driver.dispatch(make_request(request_id=rid, block_hashes=prompt(1, 500 + k)))
            in holders
        )
        driver.complete(rid)


def test_distinct_prefixes_spread_and_ties_go_to_the_least_loaded() -> None:
    fleet = make_fleet(4, max_concurrent_requests=1000)
    driver = FleetDriver(get_strategy("locality"), fleet)
    placed = {g: driver.dispatch(make_request(block_hashes=prompt(g, 0))) for g in range(4)}
    assert sorted(placed.values()) == ["i0", "i1", "i2", "i3"]  # no match → least loaded
    # Same prefix again for each group: its own holder, though all hold something.
    for g in range(4):
        assert driver.dispatch(make_request(block_hashes=prompt(g, 1))) == placed[g]


def test_longest_match_wins_over_a_shorter_one() -> None:
    fleet = make_fleet(2, max_concurrent_requests=1000)
    strategy = get_strategy("locality")
    short, long_ = prompt(5, 0, system_blocks=4), prompt(5, 0, system_blocks=30)
    strategy.on_dispatch(make_request(block_hashes=short), "i0")
    strategy.on_dispatch(make_request(block_hashes=long_), "i1")
    choice = strategy.select(make_request(block_hashes=prompt(5, 7, system_blocks=30)), fleet)
    assert choice.instance_id == "i1"
    assert choice.scores["i1"] > choice.scores["i0"] > 0


def test_text_only_requests_use_text_chunks() -> None:
    rng = random.Random(0)
    texts = shared_prefix_prompts(rng, 20, groups=2)
    fleet = make_fleet(4, max_concurrent_requests=1000)
    driver = FleetDriver(get_strategy("locality"), fleet)
    by_group: dict[str, set[str]] = {}
    for k, text in enumerate(texts):
        rid = f"t{k}"
        iid = driver.dispatch(make_request(request_id=rid, prompt_text=text))
        by_group.setdefault(text[:9], set()).add(iid)
        driver.complete(rid)
    assert all(len(v) == 1 for v in by_group.values())

"""round_robin and random: their defining behaviour."""

from __future__ import annotations

import random
from collections import Counter

from routing_testkit import FleetDriver, make_fleet, make_request

from vllm_control_plane.core.interfaces import RoutingContext
from vllm_control_plane.core.routing import get_strategy


def test_round_robin_cycles_in_id_order_regardless_of_candidate_order() -> None:
    fleet = make_fleet(3)
    strategy = get_strategy("round_robin")
    picks = []
    for k in range(9):
        cands = fleet[::-1] if k % 2 else fleet
        picks.append(strategy.select(make_request(), cands).instance_id)
    assert picks == ["i0", "i1", "i2"] * 3


def test_round_robin_skips_a_missing_candidate_and_resumes() -> None:
    a, b, c = make_fleet(3)
    strategy = get_strategy("round_robin")
    seq = [[a, b, c], [a, c], [a, b, c], [a, b, c], [a, b, c]]
    picks = [strategy.select(make_request(), cands).instance_id for cands in seq]
    assert picks == ["i0", "i2", "i0", "i1", "i2"]


def test_round_robin_spreads_evenly_under_contention() -> None:
    driver = FleetDriver(get_strategy("round_robin"), make_fleet(4))
    for k in range(400):
        driver.dispatch(make_request(now=k))
        if k % 3 == 0:
            driver.complete(next(iter(driver.placed)))
    assert set(driver.counts().values()) == {100}


def test_random_is_seeded_and_roughly_uniform() -> None:
    fleet = make_fleet(4)
    strategy = get_strategy("random", RoutingContext(rng=random.Random(42)))
    counts = Counter(strategy.select(make_request(), fleet).instance_id for _ in range(4000))
    assert set(counts) == {"i0", "i1", "i2", "i3"}
    assert all(900 <= n <= 1100 for n in counts.values())  # fixed seed: not flaky

"""least_connections, least_request (AIBrix) and least_response_time."""

from __future__ import annotations

import random
from collections import Counter

from routing_testkit import FleetDriver, make_fleet, make_instance, make_request

from vllm_control_plane.core.interfaces import RoutingContext
from vllm_control_plane.core.routing import get_strategy


def test_least_connections_picks_the_least_busy_under_contention() -> None:
    fleet = make_fleet(4)
    driver = FleetDriver(get_strategy("least_connections"), fleet)
    rng = random.Random(3)
    for k in range(500):
        before = {i.instance_id: i.active_requests for i in driver.candidates()}
        iid = driver.dispatch(make_request(now=k))
        assert before[iid] == min(before.values())
        while driver.placed and rng.random() < 0.45:
            driver.complete(rng.choice(sorted(driver.placed)))


def test_least_connections_tie_break_is_deterministic() -> None:
    small = make_instance("a-small")
    big = make_instance("z-big", gpu_type="H100", gpu_count=2, tensor_parallel_size=2)
    twin = make_instance("b-small")
    strategy = get_strategy("least_connections")
    for cands in ([small, big, twin], [twin, small, big]):
        assert strategy.select(make_request(), cands).instance_id == "z-big"  # larger wins
    assert strategy.select(make_request(), [twin, small]).instance_id == "a-small"  # then id


def test_least_request_breaks_ties_at_random_among_the_least_busy() -> None:
    a, b, c = make_fleet(3)
    c.active_requests = 5
    strategy = get_strategy("least_request", RoutingContext(rng=random.Random(1)))
    counts = Counter(strategy.select(make_request(), [a, b, c]).instance_id for _ in range(400))
    assert counts["i2"] == 0
    assert counts["i0"] > 150 and counts["i1"] > 150


def test_least_response_time_probes_untried_then_prefers_the_fast_instance() -> None:
    fast, slow = make_instance("fast"), make_instance("slow")
    driver = FleetDriver(get_strategy("least_response_time"), [fast, slow])
    # Both untried: each gets one probe, not a burst.
    first = [driver.dispatch(make_request(request_id=f"p{k}", now=0.0)) for k in range(2)]
    assert sorted(first) == ["fast", "slow"]
    driver.complete("p0" if first[0] == "fast" else "p1", now=0.1)  # fast: 100 ms
    driver.complete("p1" if first[0] == "fast" else "p0", now=1.0)  # slow: 1000 ms
    for k in range(60):
        now = 2.0 + k
        rid = f"r{k}"
        iid = driver.dispatch(make_request(request_id=rid, now=now))
        driver.complete(rid, now + (0.1 if iid == "fast" else 1.0))
    counts = driver.counts()
    assert counts["fast"] > 55


def test_least_response_time_weighs_latency_by_load() -> None:
    fast, slow = make_instance("fast"), make_instance("slow")
    fast.avg_latency_ms, slow.avg_latency_ms = 100.0, 400.0
    strategy = get_strategy("least_response_time")
    fast.active_requests = 3  # 100 × 4 = 400 ≥ 400 × 1: tie → first candidate
    assert strategy.select(make_request(), [fast, slow]).instance_id == "fast"
    fast.active_requests = 4  # 500 > 400
    assert strategy.select(make_request(), [fast, slow]).instance_id == "slow"

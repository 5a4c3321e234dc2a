"""power_of_two and pow2_inflight: never the busier of the two sampled."""

from __future__ import annotations

import random

import pytest
from routing_testkit import FleetDriver, make_fleet, make_instance, make_request

from vllm_control_plane.core.interfaces import RoutingContext
from vllm_control_plane.core.routing import get_strategy


@pytest.mark.parametrize("name", ["power_of_two", "pow2_inflight"])
def test_never_picks_the_busier_of_its_two(name: str) -> None:
    seed = 11
    strategy = get_strategy(name, RoutingContext(rng=random.Random(seed)))
    mirror = random.Random(seed)  # replays the strategy's draws to know which two it saw
    fleet = make_fleet(6)
    driver = FleetDriver(strategy, fleet)
    wl = random.Random(2)
    for k in range(400):
        cands = driver.candidates()
        i, j = mirror.sample(range(len(cands)), 2)
        a, b = cands[i], cands[j]
        req = make_request(prompt_tokens=100, output_tokens=100, now=k)
        la, lb = strategy.load(a, req), strategy.load(b, req)
        iid = driver.dispatch(req, cands)
        assert iid in (a.instance_id, b.instance_id)
        if la != lb:
            assert iid == (a if la < lb else b).instance_id
        while driver.placed and wl.random() < 0.5:
            driver.complete(wl.choice(sorted(driver.placed)))


def test_load_measures_differ_on_request_size_and_capacity() -> None:
    big = make_instance("tp4", gpu_type="H100", gpu_count=4, tensor_parallel_size=4)
    small = make_instance("l4", gpu_type="L4", gpu_memory_gb=24)
    req = make_request(prompt_tokens=100, output_tokens=100)
    tokens = get_strategy("power_of_two", RoutingContext(rng=random.Random(0)))
    count = get_strategy("pow2_inflight", RoutingContext(rng=random.Random(0)))
    big.active_requests = 3  # busier by count, but 40× faster
    tokens.on_dispatch(make_request(prompt_tokens=100, output_tokens=100), "l4")
    small.active_requests = 1
    assert tokens.select(req, [big, small]).instance_id == "tp4"
    assert count.select(req, [big, small]).instance_id == "l4"


def test_power_of_two_keeps_max_load_near_mean() -> None:
    fleet = make_fleet(16, max_concurrent_requests=10_000)
    driver = FleetDriver(get_strategy("power_of_two", RoutingContext(rng=random.Random(4))), fleet)
    for k in range(1600):
        driver.dispatch(make_request(now=k))
    loads = [i.active_requests for i in fleet]
    assert max(loads) - 100 <= 3  # mean 100; random placement would give ~+25

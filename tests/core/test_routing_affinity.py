"""affinity: sticky sessions by consistent hashing with bounded load."""

from __future__ import annotations

from collections import Counter

from routing_testkit import FleetDriver, make_fleet, make_instance, make_request

from vllm_control_plane.core.routing import get_strategy


def test_a_user_stays_on_one_instance() -> None:
    driver = FleetDriver(get_strategy("affinity"), make_fleet(5))
    homes = {}
    for k in range(200):
        user = f"user-{k % 20}"
        rid = f"r{k}"
        iid = driver.dispatch(make_request(request_id=rid, user_id=user, now=k))
        homes.setdefault(user, set()).add(iid)
        driver.complete(rid)
    assert all(len(h) == 1 for h in homes.values())
    assert len({next(iter(h)) for h in homes.values()}) >= 4  # users spread over the fleet


def test_session_beats_user_as_the_key() -> None:
    strategy = get_strategy("affinity")
    fleet = make_fleet(8)
    by_session = {
        strategy.select(make_request(session_id="s1", user_id=f"u{k}"), fleet).instance_id
        for k in range(20)
    }
    assert len(by_session) == 1


def test_spills_when_home_is_over_the_bound_and_returns_after() -> None:
    fleet = make_fleet(4, max_concurrent_requests=1000)
    driver = FleetDriver(get_strategy("affinity"), fleet)
    home = driver.dispatch(make_request(request_id="first", session_id="hot"))
    driver.complete("first")
    placed = [driver.dispatch(make_request(session_id="hot", now=k)) for k in range(40)]
    counts = Counter(placed)
    fair = 40 / 4
    assert counts[home] <= 1.25 * fair + 1  # home holds at most its bounded share
    assert counts[home] == max(counts.values())  # ...and is still the favourite
    assert len(counts) > 1  # the rest spilled along the ring
    driver.complete_all()
    assert driver.dispatch(make_request(session_id="hot")) == home  # back home when idle


def test_no_key_goes_to_the_least_loaded_by_capacity() -> None:
    big = make_instance("big", gpu_type="H100", gpu_count=2, tensor_parallel_size=2)
    small = make_instance("small")
    big.active_requests, small.active_requests = 3, 1  # 4/6.6 vs 2/1
    choice = get_strategy("affinity").select(make_request(), [small, big])
    assert choice.instance_id == "big"


def test_removing_an_instance_moves_only_its_keys() -> None:
    strategy = get_strategy("affinity")
    fleet = make_fleet(10)
    before = {
        f"u{k}": strategy.select(make_request(user_id=f"u{k}"), fleet).instance_id
        for k in range(500)
    }
    strategy.on_instance_removed("i3")
    rest = [i for i in fleet if i.instance_id != "i3"]
    moved = [
        u
        for u, iid in before.items()
        if strategy.select(make_request(user_id=u), rest).instance_id != iid
    ]
    assert all(before[u] == "i3" for u in moved)

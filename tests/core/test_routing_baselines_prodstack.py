"""Baselines from vLLM production-stack: ``session`` and ``prefixaware``."""

from __future__ import annotations

import bisect
import hashlib
import random
from collections import Counter

from routing_testkit import FleetDriver, make_fleet, make_request

from vllm_control_plane.core.interfaces import RoutingContext
from vllm_control_plane.core.routing import get_strategy


def uhashring_owner(nodes: list[str], key: str) -> str:
    """Independent model of uhashring's default ring: md5, 160 points '<node>-<i>', bisect."""

    def h(s: str) -> int:
        return int(hashlib.md5(s.encode()).hexdigest(), 16)

    ring = sorted((h(f"{n}-{i}"), n) for n in nodes for i in range(160))
    pos = bisect.bisect([p for p, _ in ring], h(key))
    return ring[pos % len(ring)][1]


def test_session_maps_like_uhashring_and_sticks() -> None:
    fleet = make_fleet(5)
    strategy = get_strategy("prodstack_session")
    ids = [i.instance_id for i in fleet]
    for k in range(50):
        key = f"session-{k}"
        want = uhashring_owner(ids, key)
        for _ in range(3):
            assert strategy.select(make_request(session_id=key), fleet).instance_id == want


def test_session_ring_restricted_to_candidates_equals_a_rebuilt_ring() -> None:
    fleet = make_fleet(6)
    strategy = get_strategy("prodstack_session")
    strategy.select(make_request(session_id="warm"), fleet)  # ring knows all six
    subset = [fleet[0], fleet[2], fleet[5]]
    ids = [i.instance_id for i in subset]
    for k in range(40):
        key = f"s{k}"
        assert strategy.select(make_request(session_id=key), subset).instance_id == uhashring_owner(
            ids, key
        )


def test_no_session_goes_to_unseen_engines_then_lowest_qps() -> None:
    fleet = make_fleet(3)
    driver = FleetDriver(get_strategy("prodstack_session"), fleet)
    first = [driver.dispatch(make_request(now=0.0)) for _ in range(3)]
    assert first == ["i0", "i1", "i2"]  # engines without stats come first, in order
    for k in range(5):
        driver.dispatch(make_request(now=1.0 + k), [fleet[0]])  # i0: 6 sent in the window
    driver.dispatch(make_request(now=10.0), [fleet[1]])  # i1: 2
    assert driver.dispatch(make_request(now=20.0)) == "i2"  # 1 sent: lowest QPS
    # At 70.5 s the 60 s window is [10.5, 70.5]: i0 and i1 sent nothing in it, i2 one.
    assert driver.dispatch(make_request(now=70.5)) == "i0"


def test_prefixaware_prefers_the_longest_128_char_chunk_match() -> None:
    fleet = make_fleet(3)
    strategy = get_strategy("prodstack_prefixaware", RoutingContext(rng=random.Random(0)))
    base = "".join(chr(65 + (k * 7) % 26) for k in range(400))
    strategy.on_dispatch(make_request(prompt_text=base), "i0")  # 4 chunks: 128,128,128,16
    strategy.on_dispatch(make_request(prompt_text=base[:130] + "#" * 200), "i1")  # 1 chunk shared
    query = base[:300] + "?" * 50  # shares chunks 0 and 1 with i0, chunk 0 with i1
    for _ in range(20):
        choice = strategy.select(make_request(prompt_text=query), fleet)
        assert choice.instance_id == "i0"
        assert "256 chars (2 chunks)" in choice.reason
    # A partial last chunk counts only if equal: 127 shared chars of a chunk match nothing.
    assert strategy._longest_match([hash(base[:127] + "!")], {"i0", "i1"})[0] == 0


def test_prefixaware_random_among_holders_and_all_when_no_match() -> None:
    fleet = make_fleet(3)
    strategy = get_strategy("prodstack_prefixaware", RoutingContext(rng=random.Random(3)))
    text = "shared " * 60
    strategy.on_dispatch(make_request(prompt_text=text), "i0")
    strategy.on_dispatch(make_request(prompt_text=text), "i2")
    held = Counter(
        strategy.select(make_request(prompt_text=text), fleet).instance_id for _ in range(200)
    )
    assert set(held) == {"i0", "i2"}
    fresh = Counter(
        strategy.select(make_request(prompt_text=f"novel {k} " * 40), fleet).instance_id
        for k in range(300)
    )
    assert set(fresh) == {"i0", "i1", "i2"}


def test_prefixaware_never_evicts() -> None:
    fleet = make_fleet(2)
    strategy = get_strategy("prodstack_prefixaware")
    keep = "keep me " * 40
    strategy.on_dispatch(make_request(prompt_text=keep), "i1")
    for k in range(2000):
        strategy.on_dispatch(make_request(prompt_text=f"other {k} " * 30), "i0")
    assert strategy.select(make_request(prompt_text=keep), fleet).instance_id == "i1"

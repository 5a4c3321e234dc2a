"""Baseline: llm-d endpoint picker default profile (prefix 3, queue 2, KV 2, max score)."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from routing_testkit import make_fleet, make_request

from vllm_control_plane.core.interfaces import RoutingContext
from vllm_control_plane.core.routing import get_strategy

PROMPT = "Answer from the following knowledge base. " * 40  # ~1.7K chars, 26 blocks of 64


def setup(kv: tuple[float, float], waiting: tuple[int, int]):
    strategy = get_strategy("llmd_default", RoutingContext(rng=random.Random(0)))
    fleet = make_fleet(2)
    strategy.on_dispatch(make_request(prompt_text=PROMPT), "i0")  # i0 holds the whole prefix
    for inst, u, w in zip(fleet, kv, waiting, strict=True):
        inst.kv_cache_usage, inst.num_requests_waiting = u, w
    return strategy, fleet


def test_weights_3_2_2_decide() -> None:
    # i0: 3×1 + 2×0 (longest queue) + 2×(1−0.5) = 4 ; i1: 0 + 2×1 + 2×0.5 = 3 → prefix wins.
    strategy, fleet = setup(kv=(0.5, 0.5), waiting=(4, 0))
    choice = strategy.select(make_request(prompt_text=PROMPT), fleet)
    assert choice.instance_id == "i0"
    assert choice.scores == pytest.approx({"i0": 4 / 7, "i1": 3 / 7})
    # i0: 3 + 0 + 2×0.1 = 3.2 ; i1: 0 + 2 + 2×0.9 = 3.8 → load wins over a full prefix hit.
    strategy, fleet = setup(kv=(0.9, 0.1), waiting=(4, 0))
    assert strategy.select(make_request(prompt_text=PROMPT), fleet).instance_id == "i1"


def test_queue_scorer_is_min_max_normalised() -> None:
    strategy = get_strategy("llmd_default")
    fleet = make_fleet(3)
    for inst, w in zip(fleet, (0, 5, 10), strict=True):
        inst.num_requests_waiting = w
    scores = strategy.select(make_request(prompt_text="short"), fleet).scores
    assert scores == pytest.approx({"i0": 4 / 7, "i1": 3 / 7, "i2": 2 / 7})


def test_prefix_score_is_the_matched_share_of_64_char_blocks() -> None:
    strategy = get_strategy("llmd_default")
    fleet = make_fleet(2)
    strategy.on_dispatch(make_request(prompt_text=PROMPT[:640]), "i1")  # first 10 blocks
    n_blocks = len(PROMPT) // 64
    scores = strategy.select(make_request(prompt_text=PROMPT), fleet).scores
    assert scores["i1"] == pytest.approx((3 * 10 / n_blocks + 2 + 2) / 7)
    assert scores["i0"] == 4 / 7


def test_ties_are_broken_at_random() -> None:
    strategy = get_strategy("llmd_default", RoutingContext(rng=random.Random(9)))
    fleet = make_fleet(3)
    picks = Counter(
        strategy.select(make_request(prompt_text="hi"), fleet).instance_id for _ in range(300)
    )
    assert set(picks) == {"i0", "i1", "i2"}

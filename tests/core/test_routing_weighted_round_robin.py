"""weighted_round_robin: nginx smooth WRR, exact proportions over a period."""

from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st
from routing_testkit import make_instance, make_request

from vllm_control_plane.core.routing import get_strategy
from vllm_control_plane.core.routing._common import capacity


def picks(weights: list[float], n: int) -> list[str]:
    fleet = [make_instance(f"w{k}", weight=w) for k, w in enumerate(weights)]
    strategy = get_strategy("weighted_round_robin")
    return [strategy.select(make_request(), fleet).instance_id for _ in range(n)]


def test_nginx_sequence_for_5_1_1() -> None:
    assert picks([5, 1, 1], 7) == ["w0", "w0", "w1", "w0", "w2", "w0", "w0"]


@given(st.lists(st.integers(min_value=1, max_value=9), min_size=1, max_size=6))
def test_exact_proportions_over_every_period(weights: list[int]) -> None:
    period = sum(weights)
    seq = picks([float(w) for w in weights], 3 * period)
    for p in range(3):
        counts = Counter(seq[p * period : (p + 1) * period])
        assert [counts[f"w{k}"] for k in range(len(weights))] == weights


def test_weight_defaults_to_capacity() -> None:
    big = make_instance("tp4-h100", gpu_type="H100", gpu_count=4, tensor_parallel_size=4)
    small = make_instance("l4", gpu_type="L4", gpu_memory_gb=24)
    strategy = get_strategy("weighted_round_robin")
    counts = Counter(strategy.select(make_request(), [big, small]).instance_id for _ in range(1000))
    expected = capacity(big) / (capacity(big) + capacity(small))
    assert abs(counts["tp4-h100"] / 1000 - expected) < 0.01
    assert capacity(big) > 40 * capacity(small)  # 4 × 3.35 TB/s vs 0.3 TB/s


def test_absent_candidate_keeps_its_turn_state() -> None:
    a, b = make_instance("a", weight=1), make_instance("b", weight=1)
    strategy = get_strategy("weighted_round_robin")
    assert strategy.select(make_request(), [a, b]).instance_id == "a"
    assert strategy.select(make_request(), [a]).instance_id == "a"  # b full: not a candidate
    assert strategy.select(make_request(), [a, b]).instance_id == "b"

"""Estimator (roofline prior, fallbacks, calibration) and exact cost sharing."""

from __future__ import annotations

import pytest
from core_harness import VirtualFleet, instance, request
from hypothesis import given, settings
from hypothesis import strategies as st

from vllm_control_plane.core.core import ControlCore
from vllm_control_plane.core.cost import DEFAULT_GPU_PRICES, CostMeter, gpu_price
from vllm_control_plane.core.estimator import (
    RooflineEstimator,
    params_from_name,
    resolve_gpu,
    resolve_model,
)


def test_prior_matches_the_design_anchors() -> None:
    est = RooflineEstimator()
    small = est.predict(instance("a", gpu_type="H100"), 1, 2)
    assert 6.5 <= small.tpot_ms <= 9.0  # Llama-3-8B, one H100, batch 1: ~7-8 ms
    big = instance("b", model="llama-3-70b", tensor_parallel_size=4, gpu_count=4)
    assert 13 <= est.predict(big, 1, 2).tpot_ms <= 19  # 70B TP4 H100: ~16 ms


def test_prediction_grows_with_load_and_prompt() -> None:
    est = RooflineEstimator()
    inst = instance("a")
    idle = est.predict(inst, 512, 128)
    inst.active_requests = 64
    busy = est.predict(inst, 512, 128)
    inst.num_requests_waiting = 8
    queued = est.predict(inst, 512, 128)
    assert busy.tpot_ms > idle.tpot_ms and queued.ttft_ms > 5 * busy.ttft_ms
    assert est.predict(inst, 8000, 128).ttft_ms > queued.ttft_ms
    assert busy.cost_usd < idle.cost_usd  # a shared batch splits the instance's price
    assert idle.latency_ms == pytest.approx(idle.ttft_ms + idle.tpot_ms * 127)


def test_fallback_profiles() -> None:
    assert resolve_gpu(instance("x", gpu_type=None, gpu_memory_gb=24)).name == "L4"
    assert resolve_gpu(instance("x", gpu_type=None, gpu_memory_gb=141)).name == "H200"
    assert resolve_gpu(instance("x", gpu_type="RTX-9999", gpu_memory_gb=80)).name == "H100"
    assert resolve_model("meta-llama/Meta-Llama-3-8B-Instruct").name == "llama-3-8b"
    assert params_from_name("mixtral-8x7b") == 56e9
    assert params_from_name("Qwen2.5-Coder-32B-Instruct") == 32e9
    assert params_from_name("opt-350m") == 350e6 and params_from_name("gpt-x") is None
    guess = resolve_model("mistral-13b")
    assert guess.params == 13e9 and guess.name.startswith("guess:")
    est = RooflineEstimator()
    small = est.predict(instance("s", model="some-1b"), 32, 32)
    large = est.predict(instance("l", model="some-30b"), 32, 32)
    assert small.tpot_ms < large.tpot_ms


def test_calibration_converges_to_observed_ratio() -> None:
    est = RooflineEstimator(alpha=0.3)
    inst = instance("a")
    for _ in range(60):
        pred = est.predict(inst, 128, 64)
        est.observe("a", pred, ttft_ms=pred.ttft_ms * 1.0, tpot_ms=pred.tpot_ms * 1.0)
    assert est.calibration("a") == (1.0, 1.0)
    raw = RooflineEstimator().predict(inst, 128, 64)
    for _ in range(60):
        pred = est.predict(inst, 128, 64)
        est.observe("a", pred, ttft_ms=raw.ttft_ms * 3, tpot_ms=raw.tpot_ms * 0.5)
    ttft_ratio, tpot_ratio = est.calibration("a")
    assert ttft_ratio == pytest.approx(3, rel=0.02) and tpot_ratio == pytest.approx(0.5, rel=0.02)
    assert est.predict(inst, 128, 64).tpot_ms == pytest.approx(raw.tpot_ms * 0.5, rel=0.02)


def test_core_feeds_calibration_from_observed_timings() -> None:
    est = RooflineEstimator(alpha=0.5)
    c = ControlCore("fifo", "round_robin", estimator=est)
    fleet = VirtualFleet(c)  # serves with TTFT 50 ms and TPOT 10 ms: slower than the H100 prior
    fleet.add(instance("a", max_concurrent_requests=1))
    for k in range(20):
        fleet.submit_at(0.0, request(f"r{k}", max_tokens=16))
    fleet.run()
    ttft_ratio, tpot_ratio = est.calibration("a")
    assert ttft_ratio > 1.2 and tpot_ratio > 1.2
    rec = c.record("r19")
    assert rec.decision.predicted_ttft_ms == pytest.approx(50, rel=0.25)


def test_prices() -> None:
    assert gpu_price(instance("a", cost_per_gpu_hour=1.23), "H100") == 1.23
    assert gpu_price(instance("a"), "H100") == DEFAULT_GPU_PRICES["H100"]
    assert gpu_price(instance("a"), "mystery") == 2.0


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(0, 10), st.floats(0.001, 10)),  # (start, duration) per request
        min_size=1,
        max_size=20,
    )
)
def test_request_costs_add_up_to_busy_time(spans: list[tuple[float, float]]) -> None:
    meter = CostMeter()
    meter.add_instance("i", usd_per_hour=3600.0)  # 1 USD per second: cost == seconds
    events = []
    for k, (start, dur) in enumerate(spans):
        events += [(start, 1, k), (start + dur, 0, k)]  # stops before starts at equal times
    marks: dict[int, float] = {}
    total = 0.0
    for t, kind, k in sorted(events):
        if kind == 1:
            marks[k] = meter.start("i", t)
        else:
            cost = meter.stop("i", t, marks.pop(k))
            assert cost <= spans[k][1] + 1e-9  # never more than running alone
            total += cost
    assert total == pytest.approx(meter.busy_cost("i", 100.0), rel=1e-9, abs=1e-9)


def test_two_requests_sharing_a_batch_split_the_price() -> None:
    meter = CostMeter()
    meter.add_instance("i", usd_per_hour=3600.0)
    a = meter.start("i", 0.0)
    b = meter.start("i", 1.0)
    assert meter.stop("i", 2.0, a) == pytest.approx(1.0 + 0.5)
    assert meter.stop("i", 3.0, b) == pytest.approx(0.5 + 1.0)

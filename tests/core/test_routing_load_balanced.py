"""load_balanced: least predicted load — the estimator's latency stretched by KV pressure (scraped
or from in-flight tokens), or the drain time without an estimator."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from routing_testkit import FleetDriver, make_instance, make_request

from vllm_control_plane.core.core import ControlCore
from vllm_control_plane.core.estimator import RooflineEstimator
from vllm_control_plane.core.interfaces import Prediction, RoutingContext
from vllm_control_plane.core.routing import get_strategy
from vllm_control_plane.core.routing._common import (
    capacity,
    inflight_work,
    kv_capacity_tokens,
    minmax_scores,
)
from vllm_control_plane.types import ExecutionInstance, RequestMetadata


def test_capacity_shares_the_work_between_big_and_small() -> None:
    big = make_instance(
        "tp4-h100",
        gpu_type="H100",
        gpu_count=4,
        tensor_parallel_size=4,
        max_concurrent_requests=10_000,
    )
    small = make_instance("a100", max_concurrent_requests=10_000)
    driver = FleetDriver(get_strategy("load_balanced"), [big, small])
    for k in range(700):
        driver.dispatch(make_request(prompt_tokens=200, output_tokens=200, now=k))
    counts = driver.counts()
    ratio = counts["tp4-h100"] / counts["a100"]
    assert abs(ratio - capacity(big) / capacity(small)) < 0.2  # ≈ 6.6


def test_in_flight_tokens_not_request_counts() -> None:
    a, b = make_instance("a"), make_instance("b")
    driver = FleetDriver(get_strategy("load_balanced"), [a, b])
    driver.dispatch(make_request(prompt_tokens=8000, output_tokens=2000), [a])  # one huge
    for _ in range(3):
        driver.dispatch(make_request(prompt_tokens=100, output_tokens=100), [b])  # three small
    assert driver.dispatch(make_request(prompt_tokens=100, output_tokens=100)) == "b"
    driver.complete_all()
    assert driver.dispatch(make_request()) == "a"  # all drained: tie → first candidate


def test_scraped_queue_and_kv_pressure_count() -> None:
    a, b = make_instance("a"), make_instance("b")
    strategy = get_strategy("load_balanced")
    a.num_requests_running, a.num_requests_waiting = 4, 6  # busy with someone else's work
    assert strategy.select(make_request(), [a, b]).instance_id == "b"
    a.num_requests_running = a.num_requests_waiting = 0
    a.kv_cache_usage = 0.95
    assert strategy.select(make_request(), [a, b]).instance_id == "b"


class QueueEstimator:
    """Implements the Estimator protocol: latency from an explicit per-instance table."""

    def __init__(self, latency: dict[str, float]) -> None:
        self.latency = latency

    def predict(self, instance: ExecutionInstance, prompt_tokens: int, output_tokens: int):
        lat = self.latency[instance.instance_id]
        return Prediction(lat / 4, 1.0, lat, 0.0)


def test_uses_the_estimator_when_present() -> None:
    a, b = make_instance("a"), make_instance("b")
    a.active_requests = 50  # the fallback would avoid a...
    est = QueueEstimator({"a": 100.0, "b": 900.0})  # ...but the estimator says it is faster
    choice = get_strategy("load_balanced", RoutingContext(estimator=est)).select(
        make_request(), [a, b]
    )
    assert choice.instance_id == "a"
    assert choice.scores == {"a": 1.0, "b": 0.0}
    assert "predicted latency" in choice.reason


def test_in_flight_stays_balanced_under_steady_churn() -> None:
    fleet = [make_instance(f"i{k}", max_concurrent_requests=10_000) for k in range(4)]
    driver = FleetDriver(get_strategy("load_balanced"), fleet)
    for k in range(400):
        driver.dispatch(make_request(request_id=f"r{k}", now=k))
        if k >= 20:
            driver.complete(f"r{k - 20}")
        loads = [i.active_requests for i in fleet]
        assert max(loads) - min(loads) <= 2  # one dispatch to the min, one completion anywhere
    assert min(Counter(c.instance_id for c in driver.choices).values()) >= 80


# -- the live path: ControlCore with its default RooflineEstimator ---------------------------


def _core(*instances: ExecutionInstance) -> ControlCore:
    core = ControlCore("fifo", "load_balanced")  # estimator: RooflineEstimator (the default)
    assert isinstance(core.estimator, RooflineEstimator)
    for inst in instances:
        core.add_instance(inst)
    return core


def _place(core: ControlCore, rid: str, prompt: int = 100, output: int = 100) -> str:
    core.submit(RequestMetadata(rid, max_tokens=output), 0.0, prompt_tokens=prompt)
    (d,) = core.next_dispatches(0.0)
    return d.instance_id


def _h100(iid: str) -> ExecutionInstance:
    return ExecutionInstance(iid, model_name="llama-3-8b", gpu_type="H100")


def test_live_kv_pressure_counts_against_an_idle_twin() -> None:
    core = _core(_h100("a"), _h100("b"))
    core.update_load("a", running=0, waiting=0, kv_usage=0.95, now=0.0)
    # the estimator's own predictions tie (it sees no KV usage) and are left so...
    preds = [core.estimator.predict(core.instance(i), 100, 100) for i in ("a", "b")]
    assert preds[0] == preds[1]
    assert _place(core, "r") == "b"  # ...but load_balanced counts a's pressure
    d = core.record("r").decision
    assert d is not None and d.scores == {"a": 0.0, "b": 1.0} and "KV 95%" not in d.reason
    assert d.predicted_latency_ms == preds[1].latency_ms


def test_live_in_flight_tokens_count_not_only_request_counts() -> None:
    core = _core(_h100("a"), _h100("b"))
    assert _place(core, "big", prompt=4000, output=4000) == "a"  # idle twins: the first
    assert _place(core, "small") == "b"
    # one request in flight on each: the batch sizes (what the latency sees) are equal, but a's
    # holds 8000 tokens and b's 200: the next ones go to b
    assert _place(core, "next") == "b"
    assert _place(core, "next2") == "b"
    core.on_complete("big", 1.0, prompt_tokens=4000, completion_tokens=4000,
                     finish_reason="length")  # fmt: skip
    assert _place(core, "after") == "a"  # a drained: the emptier one again


def test_live_estimator_still_prefers_the_faster_instance_under_modest_load() -> None:
    fast = ExecutionInstance("tp4", model_name="llama-3-8b", gpu_type="H100",
                             tensor_parallel_size=4, gpu_count=4)  # fmt: skip
    slow = ExecutionInstance("l4", model_name="llama-3-8b", gpu_type="L4")
    core = _core(slow, fast)
    picks = Counter(_place(core, f"r{k}") for k in range(20))
    assert picks == {"tp4": 20}  # 20 small requests are little load for a TP4 H100


def test_predictions_and_the_predictive_strategy_are_untouched() -> None:
    """The fix lives in load_balanced's scoring: RooflineEstimator predicts as before."""
    est = RooflineEstimator()
    a = _h100("a")
    a.kv_cache_usage = 0.95
    assert est.predict(a, 100, 100) == est.predict(_h100("b"), 100, 100)


def test_scores_follow_the_documented_formula() -> None:
    """cost = latency / (1 − u/2), u = clamp(max(scraped KV, in-flight work / KV capacity)),
    checked against a slow reference built from the shared helpers, over random states."""
    rng = random.Random(7)
    est = RooflineEstimator()
    for trial in range(200):
        gpus = [rng.choice(["H100", "A100-80G", "L4"]) for _ in range(4)]
        fleet = [
            make_instance(f"i{k}", gpu_type=gpu, max_concurrent_requests=10_000)
            for k, gpu in enumerate(gpus)
        ]
        strategy = get_strategy("load_balanced", RoutingContext(estimator=est))
        driver = FleetDriver(strategy, fleet)
        for _ in range(rng.randrange(6)):
            driver.dispatch(make_request(prompt_tokens=rng.randrange(1, 6000),
                                         output_tokens=rng.randrange(1, 3000)))  # fmt: skip
        for inst in fleet:
            inst.num_requests_running = rng.randrange(4)
            inst.num_requests_waiting = rng.randrange(3)
            inst.kv_cache_usage = rng.choice([0.0, 0.3, 0.95, 1.0])
        req = make_request(prompt_tokens=rng.randrange(1, 4000), output_tokens=200)
        costs = {}
        for inst in fleet:
            work = inflight_work(inst, strategy._inflight, req.prompt_tokens + req.output_tokens)
            u = min(1.0, max(inst.kv_cache_usage, work / kv_capacity_tokens(inst)))
            lat = est.predict(inst, req.prompt_tokens, req.output_tokens).latency_ms
            costs[inst.instance_id] = lat / (1 - u / 2)
        choice = strategy.select(req, fleet)
        assert choice.instance_id == min(costs, key=costs.__getitem__), trial
        expected = minmax_scores(costs)
        assert choice.scores == pytest.approx(expected, rel=1e-9, abs=1e-9), trial

"""load_balanced: least predicted load (drain time), or the estimator's predicted latency."""

from __future__ import annotations

from collections import Counter

from routing_testkit import FleetDriver, make_instance, make_request

from vllm_control_plane.core.interfaces import Prediction, RoutingContext
from vllm_control_plane.core.routing import get_strategy
from vllm_control_plane.core.routing._common import capacity
from vllm_control_plane.types import ExecutionInstance


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

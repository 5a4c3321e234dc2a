"""One conformance suite over every registered routing strategy (adding one enrols it)."""

from __future__ import annotations

import math
import random

import pytest
from routing_testkit import FleetDriver, make_fleet, make_instance, make_request

from vllm_control_plane.core.interfaces import Prediction, RoutingContext
from vllm_control_plane.core.routing import (
    BASELINES,
    STRATEGIES,
    get_strategy,
    normalize_name,
    strategy_names,
)
from vllm_control_plane.types import ExecutionInstance

ALL = strategy_names()


class FakeEstimator:
    """Latency grows with load and shrinks with GPU count (implements the Estimator protocol)."""

    def predict(self, instance: ExecutionInstance, prompt_tokens: int, output_tokens: int):
        ttft = 20.0 * (instance.active_requests + 1) / instance.gpu_count
        tpot = 10.0 / instance.gpu_count
        return Prediction(ttft, tpot, ttft + tpot * (output_tokens - 1), 0.001)


def mixed_fleet() -> list[ExecutionInstance]:
    return [
        make_instance("h100-tp4", gpu_type="H100", gpu_count=4, tensor_parallel_size=4),
        make_instance("a100-a", max_concurrent_requests=8),
        make_instance("a100-b", max_concurrent_requests=8, weight=2.0),
        make_instance("l4", gpu_type="L4", gpu_memory_gb=24, max_concurrent_requests=4),
        make_instance("h200", gpu_type="H200", gpu_memory_gb=141),
    ]


def run_workload(name: str, seed: int, n: int = 300, estimator: bool = False) -> list[str]:
    """A mixed, deterministic workload; asserts the per-decision contract as it goes."""
    ctx = RoutingContext(estimator=FakeEstimator() if estimator else None, rng=random.Random(seed))
    driver = FleetDriver(get_strategy(name, ctx), mixed_fleet())
    wl = random.Random(1000 + seed)
    prefixes = ["You are a helpful assistant. " * 12, "Summarise this contract. " * 20, ""]
    picks = []
    for k in range(n):
        now = k * 0.05
        for inst in driver.instances.values():  # scraped signals drift
            inst.num_requests_waiting = wl.randrange(0, 4)
            inst.kv_cache_usage = wl.random()
        text = wl.choice(prefixes) + f"q{wl.randrange(20)}" * wl.randrange(1, 30)
        req = make_request(
            request_id=f"q{k}",  # the same ids on every run: completions pick by sorted id
            prompt_text=text,
            session_id=wl.choice([None, "s1", "s2", "s3", f"s{k}"]),
            prompt_tokens=max(1, len(text) // 4),
            output_tokens=wl.randrange(1, 400),
            now=now,
            block_hashes=tuple(hash((text[:64], b)) for b in range(len(text) // 64)),
            model_name="llama-3-8b",
        )
        cands = driver.candidates()
        if len(cands) > 1 and wl.random() < 0.3:  # the policy sometimes narrows the set
            cands = wl.sample(cands, wl.randrange(1, len(cands)))
        if not cands:
            driver.complete(next(iter(driver.placed)), now)
            cands = driver.candidates()
        iid = driver.dispatch(req, cands)
        choice = driver.choices[-1]
        ids = {c.instance_id for c in cands}
        assert set(choice.scores) <= ids
        assert all(0.0 <= s <= 1.0 and math.isfinite(s) for s in choice.scores.values())
        assert isinstance(choice.reason, str) and choice.reason
        picks.append(iid)
        while driver.placed and wl.random() < 0.55:
            driver.complete(wl.choice(sorted(driver.placed)), now)
    return picks


@pytest.mark.parametrize("name", ALL)
def test_picks_a_candidate_with_bounded_scores(name: str) -> None:
    picks = run_workload(name, seed=1)
    assert len(picks) == 300


@pytest.mark.parametrize("name", ALL)
def test_deterministic_for_a_seeded_rng(name: str) -> None:
    assert run_workload(name, seed=7, n=150) == run_workload(name, seed=7, n=150)


def test_estimator_path_is_conformant_and_deterministic() -> None:
    assert run_workload("load_balanced", 3, 150, True) == run_workload(
        "load_balanced", 3, 150, True
    )


@pytest.mark.parametrize("name", ALL)
def test_works_with_one_candidate(name: str) -> None:
    strategy = get_strategy(name, RoutingContext(rng=random.Random(0)))
    only = make_instance("solo")
    for k in range(5):
        req = make_request(prompt_text="hello " * 50, session_id="s", now=float(k))
        choice = strategy.select(req, [only])
        assert choice.instance_id == "solo"
        strategy.on_dispatch(req, "solo")


@pytest.mark.parametrize("name", ALL)
def test_handles_instance_removal(name: str) -> None:
    driver = FleetDriver(get_strategy(name, RoutingContext(rng=random.Random(5))), make_fleet(4))
    text = "shared system prompt " * 40
    for k in range(40):
        driver.dispatch(make_request(prompt_text=text, session_id=f"u{k % 5}", now=k * 0.1))
    victim = driver.placed[next(iter(driver.placed))]
    driver.remove(victim)
    driver.complete_all(now=5.0)  # completions for the removed instance arrive afterwards
    for k in range(40):
        iid = driver.dispatch(make_request(prompt_text=text, session_id=f"u{k % 5}", now=6 + k))
        assert iid != victim
    # Re-registering the same id starts clean and is routable again.
    driver.instances[victim] = make_instance(victim)
    for k in range(20):
        driver.dispatch(make_request(prompt_text=f"fresh {k} " * 30, now=50.0 + k))


@pytest.mark.parametrize("name", ALL)
def test_ignores_unknown_completions(name: str) -> None:
    strategy = get_strategy(name)
    strategy.on_complete("never-dispatched", "nowhere", 1.0)
    strategy.on_instance_removed("never-seen")


def test_registry_names_and_factories() -> None:
    assert len(ALL) == len(set(ALL)) == len(STRATEGIES)
    for name in ALL:
        strategy = get_strategy(name)
        assert strategy.name == name
        assert get_strategy(name) is not strategy  # fresh object each time
    assert set(BASELINES) <= set(ALL)
    assert normalize_name(" Least-Request ") == "least_request"


def test_unknown_name_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError) as err:
        get_strategy("fastest")
    for name in ALL:
        assert name in str(err.value)

"""The core's caches never answer stale: fleet look-ups and predictions against brute force.

A hypothesis state machine drives a core through every change an instance can go through
(added, removed busy or idle, drained, resumed, health flips, load updates, dispatches,
completions, failures, calibration — also calibration done behind the core's back) and after
every step compares each cached answer with one recomputed from scratch. A second test runs the
same workloads with and without the prediction cache and requires identical decisions.
"""

from __future__ import annotations

import contextlib
import random

from core_harness import ServiceModel, VirtualFleet, instance, request
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from vllm_control_plane.core.core import ControlCore
from vllm_control_plane.core.estimator import RooflineEstimator
from vllm_control_plane.core.fleet import matches_hint
from vllm_control_plane.core.interfaces import Prediction
from vllm_control_plane.core.policies import POLICIES
from vllm_control_plane.core.predictions import PredictionCache, cacheable
from vllm_control_plane.types import ExecutionInstance, ParallelismType, RequestStatus

S = RequestStatus
IDS = ["a", "b", "c", "d", "e"]
MODELS = ["llama-3-8b", "qwen-7b"]
HINTS = [None, ParallelismType.TENSOR_PARALLEL, ParallelismType.EXPERT_PARALLEL]
SHAPES = [(16, 16), (700, 128)]


def _make(iid: str, model: str, gpu: str, tp: int, expert: bool) -> ExecutionInstance:
    labels = {"expert_parallel": "true"} if expert else {}
    return instance(
        iid, model, gpu_type=gpu, tensor_parallel_size=tp, gpu_count=tp, labels=labels,
        max_concurrent_requests=2,
    )  # fmt: skip


class CacheMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.core = ControlCore("cost_optimized", "load_balanced")
        self.now = 0.0
        self.seq = 0
        self.running: list[str] = []
        self.core.add_instance(_make("a", MODELS[0], "H100", 1, False))

    # -- rules: every kind of change ----------------------------------------------------------
    @rule(
        iid=st.sampled_from(IDS),
        model=st.sampled_from(MODELS),
        gpu=st.sampled_from(["H100", "A100-80G", "L4"]),
        tp=st.sampled_from([1, 2]),
        expert=st.booleans(),
    )
    def add_or_remove(self, iid: str, model: str, gpu: str, tp: int, expert: bool) -> None:
        if iid in self._registered():
            self.core.remove_instance(iid)  # busy ones retire until their requests end
        else:
            with contextlib.suppress(ValueError):  # still finishing its old requests
                self.core.add_instance(_make(iid, model, gpu, tp, expert))

    @precondition(lambda self: self.core.instances())
    @rule(data=st.data(), change=st.sampled_from(["drain", "resume", "sick", "well", "load"]))
    def change(self, data, change: str) -> None:  # type: ignore[no-untyped-def]
        iid = data.draw(st.sampled_from(sorted(self._registered())))
        c, now = self.core, self.now
        if change == "drain":
            c.drain_instance(iid)
        elif change == "resume":
            c.resume_instance(iid)
        elif change in ("sick", "well"):
            c.set_health(iid, change == "well", now)
        else:
            running, waiting = data.draw(st.integers(0, 3)), data.draw(st.sampled_from([0, 2, 30]))
            c.update_load(iid, running, waiting, data.draw(st.sampled_from([0.1, 0.99])), now)

    @rule(
        model=st.sampled_from([None, *MODELS]),
        hint=st.sampled_from(HINTS),
        slo=st.sampled_from([None, 2_000]),
        shape=st.sampled_from(SHAPES),
    )
    def submit_and_dispatch(self, model, hint, slo, shape) -> None:  # type: ignore[no-untyped-def]
        self.seq += 1
        self.now += 0.01
        req = request(
            f"r{self.seq}", model_name=model, parallelism_hint=hint, slo_deadline_ms=slo,
            max_tokens=shape[1],
        )  # fmt: skip
        self.core.submit(req, self.now, prompt_tokens=shape[0])
        for d in self.core.next_dispatches(self.now):
            self.running.append(d.request_id)

    @precondition(lambda self: self.running)
    @rule(data=st.data(), how=st.sampled_from(["complete", "fail"]))
    def finish(self, data, how: str) -> None:  # type: ignore[no-untyped-def]
        rid = self.running.pop(data.draw(st.integers(0, len(self.running) - 1)))
        self.now += 0.05
        c = self.core
        if c.status(rid) not in (S.SCHEDULED, S.RUNNING):
            return
        if how == "complete":
            c.on_first_token(rid, self.now)  # calibrates TTFT
            c.on_complete(rid, self.now + 0.1, prompt_tokens=8, completion_tokens=9,
                          finish_reason="stop")  # fmt: skip
        else:
            c.on_failed(rid, self.now, "boom", retryable=True)
        for d in c.next_dispatches(self.now):
            self.running.append(d.request_id)

    @precondition(lambda self: self.core.instances())
    @rule(data=st.data())
    def calibrate_behind_the_cores_back(self, data) -> None:  # type: ignore[no-untyped-def]
        iid = data.draw(st.sampled_from(sorted(self._registered())))
        self.core.estimator.observe(iid, Prediction(10.0, 1.0, 20.0, 0.0), ttft_ms=50.0)  # type: ignore[attr-defined]

    # -- invariants: cached == recomputed -----------------------------------------------------
    def _registered(self) -> set[str]:
        return {i.instance_id for i in self.core.instances()}

    @invariant()
    def fleet_answers_are_fresh(self) -> None:
        fleet, insts = self.core._fleet, self.core.instances()
        for model in MODELS:
            mine = [i for i in insts if i.model_name == model]
            for hint in HINTS:
                serving = tuple(i for i in mine if matches_hint(i, hint))
                assert fleet.serving(model, hint) == serving
                up = tuple(i for i in serving if i.is_healthy and i.is_available)
                assert fleet.usable(model, hint) == up
                assert fleet.usable(model, hint, {"a"}) == tuple(
                    i for i in up if i.instance_id != "a"
                )
            ready = {i.instance_id for i in mine if fleet._is_ready(i)}
            assert {i.instance_id for i in fleet.ready(model, None, set())} == ready
            if mine:
                assert fleet.ready(model, None, set()) == tuple(fleet._ready[model].values())
        up = [i for i in insts if i.is_healthy and i.is_available]
        capacity = sum(i.max_concurrent_requests for i in up)
        expected = sum(i.active_requests for i in up) / capacity if capacity else 1.0
        assert fleet.utilisation() == expected
        assert fleet.available_count() == len(up)

    @invariant()
    def predictions_are_fresh(self) -> None:
        cache, raw = self.core._predictions, self.core.estimator
        assert cache is not None
        for model in MODELS:
            usable = self.core._fleet.usable(model, None)
            for p, o in SHAPES:
                expected = {i.instance_id: raw.predict(i, p, o) for i in usable}
                assert cache.predict_many(usable, p, o) == expected
                assert cache.predict_many(usable, p, o) == expected  # the remembered answer
                for inst in usable:
                    assert cache.predict(inst, p, o) == expected[inst.instance_id]


TestCacheMachine = CacheMachine.TestCase
TestCacheMachine.settings = settings(
    max_examples=60, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)  # fmt: skip


# -- decisions with and without the prediction cache -------------------------------------------
class Uncached:
    """The default estimator without the promise the cache needs: the core must not cache."""

    def __init__(self) -> None:
        self.inner = RooflineEstimator()

    def predict(self, instance: ExecutionInstance, prompt: int, output: int) -> Prediction:
        return self.inner.predict(instance, prompt, output)

    def predict_floor(self, instance: ExecutionInstance, prompt: int, output: int) -> Prediction:
        return self.inner.predict_floor(instance, prompt, output)

    def observe(self, instance_id: str, predicted: Prediction, **observed: float | None) -> None:
        self.inner.observe(instance_id, predicted, **observed)  # type: ignore[arg-type]

    def forget(self, instance_id: str) -> None:
        self.inner.forget(instance_id)


def _decisions(policy: str, strategy: str, estimator: object, seed: int) -> list[object]:
    core = ControlCore(policy, strategy, estimator=estimator, seed=seed)  # type: ignore[arg-type]
    rng = random.Random(seed)
    fleet = VirtualFleet(core, ServiceModel(crowding=0.1))
    gpus = ["H100", "A100-80G", "L4"]
    fleet.add(*(instance(f"i{k}", gpu_type=gpus[k % 3], max_concurrent_requests=3)
                for k in range(20)))  # fmt: skip
    fleet.failing.add("i4")
    for k in range(250):
        slo = rng.choice([None, 300, 3_000])
        req = request(f"r{k}", slo_deadline_ms=slo, max_tokens=rng.choice([8, 64]))
        fleet.submit_at(k * 0.004, req, prompt_tokens=rng.choice([16, 512, 2048]))
    fleet.run(until=0.5)
    core.set_health("i7", False, fleet.now)
    core.update_load("i8", 2, 20, 0.5, fleet.now)
    core.drain_instance("i9")
    fleet.run()
    out: list[object] = [
        (d.request_id, d.instance_id, d.attempt, d.decision.reason, d.decision.scores,
         d.decision.predicted_latency_ms, d.decision.estimated_cost)
        for d in fleet.dispatches
    ]  # fmt: skip
    out.append(core.counters().as_dict())
    return out


def test_the_prediction_cache_changes_no_decision() -> None:
    assert cacheable(RooflineEstimator()) and not cacheable(Uncached())
    for policy in POLICIES:
        for strategy in ("load_balanced", "round_robin", "least_response_time"):
            cached = _decisions(policy, strategy, RooflineEstimator(), seed=3)
            plain = _decisions(policy, strategy, Uncached(), seed=3)
            assert cached == plain, (policy, strategy)


def test_an_estimator_without_the_promise_is_used_directly() -> None:
    est = Uncached()
    core = ControlCore("cost_optimized", "load_balanced", estimator=est)  # type: ignore[arg-type]
    assert core._predictions is None and core.policy.ctx.estimator is est
    assert core.strategy.context.estimator is est


def test_instances_of_one_deployment_share_predictions_only_when_alike() -> None:
    est = RooflineEstimator()
    a, b = instance("a"), instance("b")
    assert est.predict(a, 100, 10) == est.predict(b, 100, 10)
    b.active_requests = 3
    assert est.predict(a, 100, 10) != est.predict(b, 100, 10)
    b.active_requests = 0
    est.observe("b", est.predict(b, 100, 10), ttft_ms=1e4)
    assert est.predict(a, 100, 10).ttft_ms < est.predict(b, 100, 10).ttft_ms
    dear = instance("dear", cost_per_gpu_hour=30.0)
    assert est.predict(dear, 100, 10).cost_usd > est.predict(a, 100, 10).cost_usd


def test_prediction_cache_refuses_an_estimator_without_the_promise() -> None:
    core = ControlCore()
    try:
        PredictionCache(Uncached(), core._fleet)  # type: ignore[arg-type]
    except TypeError:
        return
    raise AssertionError("a cache over an estimator that promised nothing must refuse")

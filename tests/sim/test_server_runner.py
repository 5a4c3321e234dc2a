"""The real-time driver: model time, time scale, idling and engine failures (fake engine)."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from vllm_control_plane.sim.runner import EngineRunner
from vllm_control_plane.sim.types import EngineRequest, StepResult, TokenOutput


class FakeEngine:
    """Each request needs ``steps`` steps of ``dt`` model seconds; one token per step."""

    def __init__(self, dt: float = 0.01, steps: int = 5, fail_at: int | None = None) -> None:
        self.dt, self.steps, self.fail_at = dt, steps, fail_at
        self.live: dict[str, int] = {}
        self.calls: list[float] = []
        self.arrivals: list[float] = []

    def add_request(self, req: EngineRequest, now: float) -> None:
        self.arrivals.append(now)
        self.live[req.request_id] = 0

    def step(self, now: float) -> StepResult:
        self.calls.append(now)
        if self.fail_at is not None and len(self.calls) >= self.fail_at:
            raise RuntimeError("boom")
        outs = []
        for rid in list(self.live):
            self.live[rid] += 1
            n = self.live[rid]
            done = n >= self.steps
            outs.append(TokenOutput(rid, 1, n, n == 1, "length" if done else None))
            if done:
                del self.live[rid]
        return StepResult(self.dt, tuple(outs))

    def abort(self, request_id: str) -> bool:
        return self.live.pop(request_id, None) is not None

    def has_unfinished(self) -> bool:
        return bool(self.live)


def _req(rid: str) -> EngineRequest:
    return EngineRequest(rid, prompt_tokens=4, max_tokens=5)


async def _run_one(runner: EngineRunner, engine: FakeEngine, seen: list) -> None:
    done = asyncio.Event()

    def sink(start: float, end: float, res: StepResult) -> None:
        seen.append((start, end))
        if any(o.finish_reason for o in res.outputs):
            done.set()

    runner._sink = sink
    runner.add(_req(f"r{len(engine.arrivals)}"))
    await asyncio.wait_for(done.wait(), 5)


@pytest.mark.parametrize("time_scale", [0.0, 0.01])
async def test_busy_steps_are_back_to_back_in_model_time(time_scale: float) -> None:
    engine = FakeEngine()
    runner = EngineRunner(engine, lambda *a: None, time_scale=time_scale)
    runner.start()
    seen: list[tuple[float, float]] = []
    await _run_one(runner, engine, seen)
    await runner.stop()
    assert len(seen) == 5
    assert seen[0][0] == engine.arrivals[0]  # the first step starts at the arrival
    for (_, e0), (s1, _) in itertools.pairwise(seen):
        assert s1 == e0  # no wall-clock overhead leaks into model time
    assert seen[-1][1] - seen[0][0] == pytest.approx(5 * 0.01)


async def test_as_fast_as_possible_keeps_virtual_time() -> None:
    engine = FakeEngine(dt=2.0, steps=3)  # 6 model seconds, no wall wait at time_scale 0
    runner = EngineRunner(engine, lambda *a: None, time_scale=0.0)
    runner.start()
    seen: list[tuple[float, float]] = []
    await _run_one(runner, engine, seen)
    await _run_one(runner, engine, seen)  # idle in between does not advance virtual time
    await runner.stop()
    assert [e for _, e in seen] == [2.0, 4.0, 6.0, 8.0, 10.0, 12.0]
    assert engine.arrivals == [0.0, 6.0]


async def test_idle_runner_does_not_spin() -> None:
    engine = FakeEngine()
    runner = EngineRunner(engine, lambda *a: None, time_scale=0.0)
    runner.start()
    for _ in range(20):
        await asyncio.sleep(0)
    assert runner.steps == 0 and runner.running
    await runner.stop()
    assert not runner.running


async def test_slowdown_multiplies_durations() -> None:
    engine = FakeEngine(dt=1.0, steps=2)
    runner = EngineRunner(engine, lambda *a: None, time_scale=0.0, slowdown=lambda: 2.5)
    runner.start()
    seen: list[tuple[float, float]] = []
    await _run_one(runner, engine, seen)
    await runner.stop()
    assert [e - s for s, e in seen] == [2.5, 2.5]


async def test_engine_failure_is_reported_once() -> None:
    errors: list[BaseException] = []
    engine = FakeEngine(fail_at=2)
    runner = EngineRunner(engine, lambda *a: None, time_scale=0.0, on_error=errors.append)
    runner.start()
    runner.add(_req("a"))
    while runner.running:
        await asyncio.sleep(0)
    assert isinstance(runner.error, RuntimeError) and errors == [runner.error]
    await runner.stop()


def test_negative_time_scale_is_refused() -> None:
    with pytest.raises(ValueError):
        EngineRunner(FakeEngine(), lambda *a: None, time_scale=-1)

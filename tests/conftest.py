"""Shared test fixtures: a small simulated vLLM server and a polling helper."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest

from vllm_control_plane.sim.launcher import SimServer
from vllm_control_plane.sim.types import EngineSpec

FAST = 0.02  # time scale for tests: 50x faster than real time


@pytest.fixture
def sim_spec() -> EngineSpec:
    """Llama-3-8B on one H100 with short natural outputs (tests stay quick)."""
    return EngineSpec(model="llama-3-8b", gpu="H100", mean_output_tokens=8.0, seed=1)


@pytest.fixture
async def sim_server(sim_spec: EngineSpec) -> AsyncIterator[SimServer]:
    """A started simulated server on a free loopback port, closed after the test."""
    async with SimServer(sim_spec, time_scale=FAST) as srv:
        yield srv


async def _wait_until(cond: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or cond}")
        await asyncio.sleep(0.005)


@pytest.fixture
def wait_until() -> Callable[..., object]:
    """``await wait_until(cond, timeout=5.0, what="")``: poll ``cond`` on the event loop until it
    holds; fail after ``timeout`` seconds (a bound on a condition, not a timing assumption)."""
    return _wait_until

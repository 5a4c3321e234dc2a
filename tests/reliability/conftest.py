"""Fixtures of the reliability suite: started managers and servers that are always cleaned up,
and a task-leak check after every test."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from tests.reliability.faultkit import RecordingBackend, manager

from vllm_control_plane.manager import ControlPlaneManager
from vllm_control_plane.sim.launcher import SimServer


@pytest.fixture
async def no_task_leaks() -> AsyncIterator[None]:
    """Every task the test started has ended by teardown (after the other fixtures closed)."""
    before = set(asyncio.all_tasks())
    yield
    current = asyncio.current_task()
    for _ in range(50):
        left = [t for t in asyncio.all_tasks() if t not in before and t is not current]
        if not left:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"leaked tasks: {[t.get_name() for t in left]}")


@pytest.fixture
async def servers(no_task_leaks: None) -> AsyncIterator[Callable[..., Any]]:
    """``await servers(sim(...), ...)``: start simulated servers, closed after the test."""
    started: list[SimServer] = []

    async def start(*sims: SimServer) -> list[SimServer]:
        for s in sims:
            await s.start()
            started.append(s)
        return list(sims)

    yield start
    await asyncio.gather(*(s.close() for s in started))


@pytest.fixture
async def make_cp(
    servers: Callable[..., Any],
) -> AsyncIterator[Callable[..., tuple[ControlPlaneManager, RecordingBackend]]]:
    """``make_cp(**manager_kwargs)``: a manager over a recording backend, stopped after the test
    (before the servers close); after ``stop`` its HTTP session must be closed."""
    made: list[tuple[ControlPlaneManager, RecordingBackend]] = []

    def make(**kw: Any) -> tuple[ControlPlaneManager, RecordingBackend]:
        pair = manager(**kw)
        made.append(pair)
        return pair

    yield make
    for cp, backend in made:
        await cp.stop()
        assert not cp.is_running
        assert backend.inner._pool is None  # type: ignore[attr-defined]

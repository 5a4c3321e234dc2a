"""Real-time driver: runs one pure engine against the wall clock inside an asyncio loop.

How it works: one task per engine loops ``res = engine.step(t)``, sleeps until model time
``t + duration`` is due on the wall clock, then hands the step to a sink (the HTTP layer) that
publishes the outputs. With nothing to do it parks on an event until a request arrives.

Time. The engine only ever sees *model* seconds. ``time_scale`` maps them to the wall:
one model second lasts ``time_scale`` wall seconds (1.0 = real time, 0.1 = ten times faster,
0 = as fast as the CPU allows, with model time advanced only by step durations). While the
engine is busy, consecutive steps are back to back in model time: the next step starts exactly
where the previous one ended, so Python overhead and timer jitter never leak into the model's
latencies. Wall pacing follows an anchor that absorbs small lateness (timer granularity); when the
process falls behind by more than ``max_lag`` wall seconds it stops trying to catch up and
re-anchors. While idle, model time follows the wall (divided by ``time_scale``), so arrivals
after a pause see a later ``now``. The monotonic clock is read only in this module.

``slowdown`` (a fault) multiplies every step's duration, in model time as well as on the wall.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Protocol

from vllm_control_plane.sim.types import EngineRequest, StepResult

log = logging.getLogger(__name__)

__all__ = ["EngineLike", "EngineRunner", "StepSink"]


class EngineLike(Protocol):
    """The part of ``SimEngine`` the driver uses."""

    def add_request(self, req: EngineRequest, now: float) -> None: ...
    def step(self, now: float) -> StepResult: ...
    def abort(self, request_id: str) -> bool: ...
    def has_unfinished(self) -> bool: ...


class StepSink(Protocol):
    """Receives each finished step: model start and end times, and the result."""

    def __call__(self, start: float, end: float, result: StepResult) -> None: ...


class EngineRunner:
    """Drives one engine in real time (or scaled time) and publishes its steps."""

    def __init__(
        self,
        engine: EngineLike,
        sink: StepSink,
        *,
        time_scale: float = 1.0,
        slowdown: Callable[[], float] = lambda: 1.0,
        on_error: Callable[[BaseException], None] | None = None,
        max_lag: float = 0.05,
    ) -> None:
        if time_scale < 0:
            raise ValueError(f"time_scale must be >= 0, got {time_scale}")
        self.engine = engine
        self.time_scale = time_scale
        self._sink = sink
        self._slowdown = slowdown
        self._on_error = on_error
        self._max_lag = max_lag
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._anchor_model = 0.0  # model time at wall time _anchor_wall
        self._anchor_wall = time.monotonic()
        self._next = 0.0  # model time at which the next step starts
        self._busy = False
        self._last_arrival = 0.0
        self.error: BaseException | None = None
        self.steps = 0

    # ------------------------------------------------------------ clock

    def now(self) -> float:
        """Current model time (seconds). While busy it never passes the next step's start."""
        if self.time_scale == 0:
            return self._next
        t = self._anchor_model + (time.monotonic() - self._anchor_wall) / self.time_scale
        return min(t, self._next) if self._busy else max(t, self._next)

    @staticmethod
    def wall() -> float:
        """The monotonic wall clock (seconds), for pacing decisions at the HTTP edge."""
        return time.monotonic()

    # ------------------------------------------------------------ requests

    def add(self, req: EngineRequest, now: float | None = None) -> None:
        """Queue a request at model time ``now`` (default: the current one; raises
        ``EngineInputError`` as the engine does) and wake the loop."""
        now = self.now() if now is None else now
        self.engine.add_request(req, now)
        self._last_arrival = max(self._last_arrival, now)
        self._wake.set()

    def abort(self, request_id: str) -> bool:
        """Abort at once (frees KV blocks); outputs of an in-flight step for it are dropped by the
        sink, which no longer knows the id."""
        found = self.engine.abort(request_id)
        self._wake.set()
        return found

    # ------------------------------------------------------------ lifecycle

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if self._task is None:
            self._anchor_wall = time.monotonic()
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="sim-engine")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _loop(self) -> None:
        try:
            while True:
                if not self.engine.has_unfinished():
                    await self._idle()
                    continue
                await self._one_step()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the engine broke: report once, stop driving it
            log.exception("simulated engine failed")
            self.error = exc
            if self._on_error is not None:
                self._on_error(exc)

    async def _idle(self) -> None:
        if self._busy:
            self._busy = False
            self._reanchor(self._next)
        self._wake.clear()
        await self._wake.wait()

    async def _one_step(self) -> None:
        # Waking from idle, the step starts at the latest arrival: the time the event loop took
        # to get here is the simulator's, not the model's.
        start = self._next if self._busy else max(self._next, self._last_arrival)
        result = self.engine.step(start)
        self.steps += 1
        duration = result.duration * self._slowdown()
        if duration <= 0 and not result.outputs:
            # Work exists but none can be scheduled now; wait for an arrival or an abort.
            self._busy = False
            self._wake.clear()
            await self._wake.wait()
            return
        end = start + duration
        self._busy = True
        self._next = end
        await self._wait_until(end)
        self._sink(start, end, result)

    async def _wait_until(self, model_t: float) -> None:
        if self.time_scale == 0:
            await asyncio.sleep(0)  # let handlers write between steps
            return
        deadline = self._anchor_wall + (model_t - self._anchor_model) * self.time_scale
        delay = deadline - time.monotonic()
        await asyncio.sleep(max(delay, 0.0))
        if time.monotonic() - deadline > self._max_lag:
            self._reanchor(model_t)  # too far behind: stop trying to catch up

    def _reanchor(self, model_t: float) -> None:
        self._anchor_model = model_t
        self._anchor_wall = time.monotonic()

"""Virtual-time driver: run a fleet of simulated engines against timed arrivals, fast.

How it works: engines interact only through arrivals (and aborts), so between two external
events each engine is advanced on its own. ``VirtualFleet.run_until(t)`` runs every engine's
steps that *start* before ``t`` (an arrival at ``t`` is seen by the step starting at ``t``),
using the engine's multi-step fast path whenever the batch cannot change and one
:meth:`SimEngine.step` otherwise. Outputs take effect at the end of their step, which is when a
record's first-token and finish times are stamped.

:func:`run_virtual` is the simple loop on top: for each arrival in time order, bring the fleet
to that time, pick an engine (a fixed index, or ``route(arrival, engines, now)``), submit; then
run to completion. A caller that needs more control (a control-plane queue, aborts, routers
that learn from completions) drives :class:`VirtualFleet` directly; ``on_finish`` reports each
completed record at its finish time order within an engine.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from vllm_control_plane.sim.engine import SimEngine
from vllm_control_plane.sim.types import EngineInputError, EngineRequest, TokenOutput


@dataclass(frozen=True, slots=True)
class Arrival:
    """A request arriving at ``time``; ``engine`` fixes its engine, else the router decides."""

    time: float
    request: EngineRequest
    engine: int | None = None


RouteFn = Callable[[Arrival, Sequence[SimEngine], float], int]


@dataclass(slots=True)
class RequestRecord:
    """One request's life in virtual time (seconds, same origin as the arrivals)."""

    request_id: str
    engine: int
    arrival: float
    prompt_tokens: int
    first_token_time: float | None = None
    finish_time: float | None = None
    output_tokens: int = 0
    cached_tokens: int = 0
    finish_reason: str | None = None  # "stop" | "length" | "abort"; None while running
    error: str | None = None  # EngineInputError message when the engine rejected it

    @property
    def ttft(self) -> float | None:
        return None if self.first_token_time is None else self.first_token_time - self.arrival

    @property
    def e2e(self) -> float | None:
        return None if self.finish_time is None else self.finish_time - self.arrival


class VirtualFleet:
    """Engines plus their clocks; see the module doc."""

    def __init__(
        self,
        engines: Sequence[SimEngine],
        *,
        start: float = 0.0,
        fast_path: bool = True,
        on_finish: Callable[[RequestRecord], None] | None = None,
    ) -> None:
        if not engines:
            raise ValueError("a fleet needs at least one engine")
        self.engines = list(engines)
        self.now = start
        self._free_at = [start] * len(engines)  # when each engine starts its next step
        self._fast = fast_path
        self._on_finish = on_finish
        self._live: dict[str, RequestRecord] = {}
        self.records: list[RequestRecord] = []
        self.steps = 0  # engine beats simulated (for speed reports)

    def submit(
        self, engine: int, request: EngineRequest, now: float | None = None
    ) -> RequestRecord:
        """Hand ``request`` to ``engine`` at ``now`` (default: the fleet's clock)."""
        now = self.now if now is None else now
        self.run_until(now)
        eng = self.engines[engine]
        rec = RequestRecord(request.request_id, engine, now, request.prompt_tokens)
        self.records.append(rec)
        try:
            eng.add_request(request, now)
        except EngineInputError as exc:
            rec.error, rec.finish_time = str(exc), now
            return rec
        self._live[request.request_id] = rec
        self._free_at[engine] = max(self._free_at[engine], now)
        return rec

    def abort(self, request_id: str, now: float | None = None) -> bool:
        """Abort a live request at ``now``; False if it is not live."""
        now = self.now if now is None else now
        rec = self._live.get(request_id)
        if rec is None:
            return False
        self.run_until(now)
        if not self.engines[rec.engine].abort(request_id):
            return False
        self._close(rec, "abort", now)
        return True

    def run_until(self, t: float) -> None:
        """Run every step that starts before ``t``; then the fleet's clock is ``t``."""
        for i in range(len(self.engines)):
            self._run_engine(i, t)
        if t > self.now:
            self.now = t

    def run_to_completion(self) -> float:
        """Run until every engine is idle; returns the time the last step ended."""
        self.run_until(math.inf)
        end = max(self._free_at)
        self.now = end
        return end

    def _run_engine(self, i: int, until: float) -> None:
        eng, t = self.engines[i], self._free_at[i]
        steps = 0
        while t < until and eng.has_unfinished():
            if self._fast:
                adv = eng.advance(t, until)
                if adv.num_steps:
                    t = adv.end_time
                    steps += adv.num_steps
                    self._observe(adv.finished, t)
                    continue
            res = eng.step(t)
            t += res.duration
            steps += 1
            self._observe(res.outputs, t)
        self._free_at[i] = t
        self.steps += steps

    def _observe(self, outputs: Iterable[TokenOutput], t: float) -> None:
        live = self._live
        for out in outputs:
            rec = live[out.request_id]
            rec.output_tokens = out.num_output_tokens
            if out.first_token:
                rec.first_token_time = t
                rec.cached_tokens = out.num_cached_tokens
            if out.finish_reason is not None:
                self._close(rec, out.finish_reason, t)

    def _close(self, rec: RequestRecord, reason: str, t: float) -> None:
        rec.finish_reason, rec.finish_time = reason, t
        del self._live[rec.request_id]
        if self._on_finish is not None:
            self._on_finish(rec)


def run_virtual(
    engines: Sequence[SimEngine],
    arrivals: Iterable[Arrival],
    route: RouteFn | None = None,
    *,
    fast_path: bool = True,
) -> list[RequestRecord]:
    """Replay ``arrivals`` (any order; sorted stably by time) and return one record each."""
    fleet = VirtualFleet(engines, fast_path=fast_path)
    for arrival in sorted(arrivals, key=lambda a: a.time):
        fleet.run_until(arrival.time)
        if arrival.engine is not None:
            index = arrival.engine
        elif route is not None:
            index = route(arrival, fleet.engines, arrival.time)
        else:
            raise ValueError(f"arrival {arrival.request.request_id!r} has no engine and no route")
        fleet.submit(index, arrival.request, arrival.time)
    fleet.run_to_completion()
    return fleet.records


def round_robin() -> RouteFn:
    """A route callback cycling through the engines."""
    state = {"next": 0}

    def route(arrival: Arrival, engines: Sequence[SimEngine], now: float) -> int:
        i = state["next"] % len(engines)
        state["next"] = i + 1
        return i

    return route


def least_loaded(arrival: Arrival, engines: Sequence[SimEngine], now: float) -> int:
    """A route callback picking the engine with the fewest running + waiting requests."""
    best, best_load = 0, math.inf
    for i, eng in enumerate(engines):
        load = eng.num_unfinished
        if load < best_load:
            best, best_load = i, load
    return best

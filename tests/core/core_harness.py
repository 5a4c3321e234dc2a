"""A virtual-time fake fleet that drives :class:`ControlCore` the way the runtime would.

Each instance serves a dispatched request with a simple service-time model: TTFT =
``ttft_s / speed`` and then ``tpot_s / speed × (1 + crowding × (active − 1))`` per further token,
so a busier instance is slower. Events (arrivals, first tokens, completions, failures) sit in a
heap keyed by virtual time; after each one the driver calls ``expire`` and ``next_dispatches``
exactly like the asyncio runtime does after every state change. No asyncio, no wall clock.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from vllm_control_plane.core.core import ControlCore, Dispatch
from vllm_control_plane.core.interfaces import RouteChoice, RouteRequest, RoutingStrategy
from vllm_control_plane.types import ExecutionInstance, RequestMetadata, RequestPriority

_ids = itertools.count()


class FirstCandidate(RoutingStrategy):
    """Trivial deterministic strategy: the first candidate (tests that must not depend on
    the routing helper's strategies)."""

    name = "first_candidate"

    def select(self, req: RouteRequest, candidates) -> RouteChoice:  # type: ignore[no-untyped-def]
        return RouteChoice(candidates[0].instance_id, "first candidate")


def instance(iid: str, model: str = "llama-3-8b", **kw: object) -> ExecutionInstance:
    kw.setdefault("gpu_type", "H100")
    return ExecutionInstance(instance_id=iid, model_name=model, **kw)  # type: ignore[arg-type]


def request(rid: str | None = None, **kw: object) -> RequestMetadata:
    kw.setdefault("max_tokens", 16)
    return RequestMetadata(request_id=rid or f"r{next(_ids)}", **kw)  # type: ignore[arg-type]


@dataclass
class ServiceModel:
    ttft_s: float = 0.05
    tpot_s: float = 0.01
    crowding: float = 0.05
    speed: dict[str, float] = field(default_factory=dict)  # instance id -> speed factor

    def times(self, inst: ExecutionInstance, output_tokens: int) -> tuple[float, float]:
        """(time to first token, total time) from dispatch."""
        speed = self.speed.get(inst.instance_id, 1.0)
        ttft = self.ttft_s / speed
        tpot = self.tpot_s / speed * (1 + self.crowding * max(0, inst.active_requests - 1))
        return ttft, ttft + tpot * max(0, output_tokens - 1)


@dataclass(order=True)
class _Event:
    time: float
    seq: int
    kind: str = field(compare=False)
    payload: object = field(compare=False)


class VirtualFleet:
    """Owns a virtual clock and the event heap; the core makes every decision."""

    def __init__(self, core: ControlCore, service: ServiceModel | None = None) -> None:
        self.core = core
        self.service = service or ServiceModel()
        self.now = 0.0
        self.failing: set[str] = set()  # instances that fail every request before its first token
        self.dispatches: list[Dispatch] = []
        self.on_dispatch: Callable[[Dispatch], None] | None = None
        self._events: list[_Event] = []
        self._seq = itertools.count()

    def add(self, *instances: ExecutionInstance) -> None:
        for inst in instances:
            self.core.add_instance(inst)

    def submit_at(self, t: float, req: RequestMetadata, prompt_tokens: int = 32) -> None:
        self._push(t, "arrive", (req, prompt_tokens))

    def submit_all(self, items: Iterable[tuple[float, RequestMetadata]]) -> None:
        for t, req in items:
            self.submit_at(t, req)

    def run(self, until: float | None = None) -> None:
        """Process events in time order (up to ``until``), dispatching after each one."""
        while self._events and (until is None or self._events[0].time <= until):
            ev = heapq.heappop(self._events)
            self.now = max(self.now, ev.time)
            self._handle(ev)
            self.step()
        if until is not None:
            self.now = max(self.now, until)
            self.step()

    def step(self) -> None:
        self.core.expire(self.now)
        for d in self.core.next_dispatches(self.now):
            self._start(d)
        wake = self.core.next_wakeup()
        if wake is not None and wake > self.now and not self._has_tick(wake):
            self._push(wake, "tick", None)

    def _has_tick(self, t: float) -> bool:
        return any(e.kind == "tick" and e.time == t for e in self._events)

    def _start(self, d: Dispatch) -> None:
        self.dispatches.append(d)
        if self.on_dispatch is not None:
            self.on_dispatch(d)
        inst = self.core.instance(d.instance_id)
        self.core.on_started(d.request_id, self.now)
        if d.instance_id in self.failing:
            self._push(self.now + 0.001, "fail", (d.request_id, d.instance_id))
            return
        n_out = d.request.max_tokens or 16
        ttft, total = self.service.times(inst, n_out)
        self._push(self.now + ttft, "first", (d.request_id, d.instance_id))
        self._push(self.now + total, "done", (d.request_id, d.instance_id, d.prompt_tokens, n_out))

    def _handle(self, ev: _Event) -> None:
        core = self.core
        if ev.kind == "arrive":
            req, prompt_tokens = ev.payload  # type: ignore[misc]
            core.submit(req, self.now, prompt_tokens=prompt_tokens)
        elif ev.kind in ("first", "done", "fail") and not self._current(ev.payload):
            return  # a stale event of an earlier attempt (request retried or cancelled)
        elif ev.kind == "first":
            core.on_first_token(ev.payload[0], self.now)  # type: ignore[index]
        elif ev.kind == "done":
            rid, _, p, n = ev.payload  # type: ignore[misc]
            core.on_complete(
                rid, self.now, prompt_tokens=p, completion_tokens=n, finish_reason="length"
            )
        elif ev.kind == "fail":
            core.on_failed(ev.payload[0], self.now, "injected failure", retryable=True)  # type: ignore[index]

    def _current(self, payload: object) -> bool:
        rid, iid = payload[0], payload[1]  # type: ignore[index]
        rec = self.core.record(rid)
        return (
            not rec.is_terminal
            and rec.instance_id == iid
            and rec.status.value
            in (
                "scheduled",
                "running",
            )
        )

    def _push(self, t: float, kind: str, payload: object) -> None:
        heapq.heappush(self._events, _Event(t, next(self._seq), kind, payload))


def mixed_priorities(
    n: int, start: float = 0.0, gap: float = 0.0
) -> list[tuple[float, RequestMetadata]]:
    """Alternating LOW / HIGH requests arriving ``gap`` apart."""
    out = []
    for k in range(n):
        prio = RequestPriority.HIGH if k % 2 else RequestPriority.LOW
        out.append((start + k * gap, request(f"{prio.name.lower()}-{k}", priority=prio)))
    return out

"""Helpers for the fault-injection suite: a recording backend, a manager factory, leak checks.

The recording backend wraps the real HTTP backend (a fake that implements the real protocol) and
notes every attempt: which request, on which instance, how many tokens, how it ended. Tests then
assert each request's outcome from two independent sources — the core's record and what was seen
on the wire.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from vllm_control_plane.backends.base import (
    Backend,
    BackendEvent,
    Failed,
    Finished,
    LoadSample,
    Timeouts,
    TokenChunk,
)
from vllm_control_plane.backends.openai_http import OpenAIHTTPBackend
from vllm_control_plane.core.limits import CoreLimits
from vllm_control_plane.manager import ControlPlaneManager
from vllm_control_plane.runtime.circuit import CircuitConfig
from vllm_control_plane.runtime.handles import RequestResult
from vllm_control_plane.runtime.monitor import MonitorConfig
from vllm_control_plane.runtime.probe import PROBE_PREFIX
from vllm_control_plane.runtime.retry_budget import RetryBudgetConfig
from vllm_control_plane.sim.faults import FaultConfig
from vllm_control_plane.sim.launcher import SimServer
from vllm_control_plane.sim.types import EngineSpec
from vllm_control_plane.types import ExecutionInstance, RequestMetadata

SCALE = 0.02  # simulated time runs 50x faster than real time

FAST_MONITOR = MonitorConfig(
    health_interval=0.05,
    scrape_interval=0.05,
    unhealthy_threshold=2,
    healthy_threshold=2,
    health_timeout=0.5,
)
FAST_CIRCUIT = CircuitConfig(failure_threshold=3, open_s=0.1, max_open_s=0.4, probe_timeout_s=0.5)
# Generous next to the simulated latencies (milliseconds) so a loaded CI machine does not trip
# them; the hang and idle tests set their own tighter bounds.
FAST_TIMEOUTS = Timeouts(connect=1.0, first_token=2.0, idle=2.0, health=0.5, scrape=0.5)
HANG_TIMEOUTS = Timeouts(connect=1.0, first_token=0.5, idle=2.0, health=0.5, scrape=0.5)
FAST_LIMITS = CoreLimits(max_retries=2, retry_backoff_s=0.01, retry_backoff_max_s=0.05)


@dataclass
class Attempt:
    """One request on one instance, as the backend saw it."""

    request_id: str
    instance_id: str
    tokens: int = 0
    end: str = "open"  # finished | failed:<kind> | closed (cancelled / aborted by us)
    error: str = ""
    status: int | None = None


class RecordingBackend(Backend):
    """Delegates to ``inner`` and records every attempt (probes separately)."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.attempts: list[Attempt] = []
        self.probes: list[Attempt] = []

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()

    async def generate(
        self, instance: ExecutionInstance, request: RequestMetadata
    ) -> AsyncIterator[BackendEvent]:
        attempt = Attempt(request.request_id, instance.instance_id)
        probe = request.request_id.startswith(PROBE_PREFIX)
        (self.probes if probe else self.attempts).append(attempt)
        events = self.inner.generate(instance, request)
        try:
            async for event in events:
                _note(attempt, event)
                yield event
        finally:
            if attempt.end == "open":
                attempt.end = "closed"
            await events.aclose()  # type: ignore[attr-defined]

    async def check_health(self, instance: ExecutionInstance) -> bool:
        return await self.inner.check_health(instance)

    async def scrape(self, instance: ExecutionInstance) -> LoadSample | None:
        return await self.inner.scrape(instance)

    def of(self, request_id: str) -> list[Attempt]:
        return [a for a in self.attempts if a.request_id == request_id]

    def on(self, instance_id: str) -> list[Attempt]:
        return [a for a in self.attempts if a.instance_id == instance_id]


def _note(attempt: Attempt, event: BackendEvent) -> None:
    if isinstance(event, TokenChunk):
        attempt.tokens += event.num_tokens
    elif isinstance(event, Finished):
        attempt.end = "finished"
    elif isinstance(event, Failed):
        attempt.end = f"failed:{event.kind}"
        attempt.error, attempt.status = event.error, event.status


def spec(seed: int = 1, **kw: Any) -> EngineSpec:
    return EngineSpec(model="llama-3-8b", gpu="H100", mean_output_tokens=8.0, seed=seed, **kw)


def sim(seed: int = 1, faults: FaultConfig | None = None, **kw: Any) -> SimServer:
    return SimServer(spec(seed, **kw), time_scale=SCALE, faults=faults)


def instance(iid: str, port: int, **kw: Any) -> ExecutionInstance:
    return ExecutionInstance(
        instance_id=iid, host="127.0.0.1", port=port, model_name="llama-3-8b", gpu_type="H100",
        **kw,
    )  # fmt: skip


def manager(
    *,
    strategy: str = "round_robin",
    limits: CoreLimits = FAST_LIMITS,
    monitor: MonitorConfig = FAST_MONITOR,
    circuit: CircuitConfig = FAST_CIRCUIT,
    budget: RetryBudgetConfig | None = None,
    timeouts: Timeouts = FAST_TIMEOUTS,
    **kw: Any,
) -> tuple[ControlPlaneManager, RecordingBackend]:
    backend = RecordingBackend(OpenAIHTTPBackend(timeouts))
    cp = ControlPlaneManager(
        "fifo",
        strategy,
        backend=backend,
        limits=limits,
        monitor_config=monitor,
        circuit_config=circuit,
        retry_budget=budget,
        **kw,
    )
    return cp, backend


def req(rid: str, max_tokens: int = 12, **kw: Any) -> RequestMetadata:
    return RequestMetadata(request_id=rid, max_tokens=max_tokens, ignore_eos=True, **kw)


async def submit_all(cp: ControlPlaneManager, requests: list[RequestMetadata]) -> list[str]:
    return [await cp.submit_request(r) for r in requests]


async def results(cp: ControlPlaneManager, ids: list[str], timeout: float = 10.0) -> dict:
    """Every request's result (fails the test if one does not end within ``timeout``)."""
    out: dict[str, RequestResult] = {}
    for rid in ids:
        out[rid] = await cp.get_result(rid, timeout=timeout)
    return out


def assert_identity(cp: ControlPlaneManager, in_flight: int = 0) -> None:
    c = cp.core.counters()
    ended = c.completed + c.failed + c.cancelled + c.rejected + c.timeout
    assert c.submitted == ended + c.in_flight and c.in_flight == in_flight, c


async def wait_until(cond: Callable[[], object], timeout: float = 5.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or cond}")
        await asyncio.sleep(0.005)


def acquired_connections(backend: RecordingBackend) -> int:
    """Connections the HTTP client holds for requests right now (not idle pooled ones)."""
    inner = backend.inner
    assert isinstance(inner, OpenAIHTTPBackend)
    pool = inner._pool
    return 0 if pool is None else pool.num_in_use


async def assert_quiet(backend: RecordingBackend, servers: list[SimServer]) -> None:
    """Nothing left running: no engine request, no hung handler, no connection in use."""

    def quiet() -> bool:
        engines_idle = all(
            s.service.num_active == 0
            and s.service.num_hanging == 0
            and s.engine.stats().num_requests_running == 0
            and s.engine.stats().num_requests_waiting == 0
            for s in servers
            if s.ready
        )
        return engines_idle and acquired_connections(backend) == 0

    await wait_until(quiet, what="engines idle and no connection in use")

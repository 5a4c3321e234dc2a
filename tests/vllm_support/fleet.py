"""Helpers for driving real vLLM servers through the control plane in tests.

How it works: ``instances`` turns running servers into ``ExecutionInstance`` objects (CPU, the
served model name); ``control_plane`` starts a ``ControlPlaneManager`` over them and always stops
it; ``EngineCounters`` reads a server's ``/metrics`` with ``prometheus_client``; ``wait_until``
polls a condition with a generous bound. On 2 cores a vLLM API server gets little CPU while its
engine is busy, so tests wait for conditions and compare counters after the fact rather than
timing anything.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from vllm_control_plane import (
    ControlPlaneManager,
    ExecutionInstance,
    MonitorConfig,
    RequestMetadata,
    RequestResult,
)

from .server import SERVED_MODEL_NAME, VllmServer

# Health checks and scrapes answered late on a busy 2-core machine must not eject a server: a long
# timeout and three strikes. A killed server refuses connections at once, so it still leaves
# rotation within about 1.5 s.
PATIENT_MONITOR = MonitorConfig(
    health_interval=0.5,
    scrape_interval=0.5,
    unhealthy_threshold=3,
    healthy_threshold=2,
    health_timeout=15.0,
)


def instance_id(index: int) -> str:
    return f"vllm-{index}"


def instances(servers: Sequence[VllmServer], *, max_concurrent: int = 4) -> list[ExecutionInstance]:
    """One CPU instance per server, ids ``vllm-0``, ``vllm-1``, ..."""
    return [
        ExecutionInstance(
            instance_id=instance_id(i),
            host="127.0.0.1",
            port=server.port,
            model_name=SERVED_MODEL_NAME,
            gpu_type="CPU",
            gpu_count=1,
            gpu_memory_gb=16.0,
            max_concurrent_requests=max_concurrent,
        )
        for i, server in enumerate(servers)
    ]


@asynccontextmanager
async def control_plane(
    servers: Sequence[VllmServer],
    *,
    scheduling_policy: str = "fifo",
    routing_strategy: str = "round_robin",
    max_concurrent: int = 4,
    monitor_config: MonitorConfig = PATIENT_MONITOR,
    **kwargs: Any,
) -> AsyncIterator[ControlPlaneManager]:
    """A started control plane over ``servers``; stopped (and its requests ended) on exit."""
    cp = ControlPlaneManager(
        scheduling_policy=scheduling_policy,
        routing_strategy=routing_strategy,
        enable_monitoring=True,
        monitor_config=monitor_config,
        **kwargs,
    )
    for inst in instances(servers, max_concurrent=max_concurrent):
        cp.register_instance(inst)
    await cp.start()
    try:
        yield cp
    finally:
        await cp.stop()


def fixed_length(request_id: str, max_tokens: int, **fields: Any) -> RequestMetadata:
    """A request whose output is exactly ``max_tokens`` tokens (greedy, EOS ignored)."""
    return RequestMetadata(
        request_id=request_id,
        model_name=SERVED_MODEL_NAME,
        max_tokens=max_tokens,
        temperature=0.0,
        ignore_eos=True,
        **fields,
    )


async def wait_until(
    condition: Callable[[], bool] | Callable[[], Awaitable[bool]],
    *,
    timeout_s: float,
    what: str,
    interval_s: float = 0.1,
) -> None:
    """Poll ``condition`` until it holds; fail the test naming ``what`` after ``timeout_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        value = condition()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        await asyncio.sleep(interval_s)


async def wait_terminal(
    cp: ControlPlaneManager, request_ids: Sequence[str], timeout_s: float
) -> dict[str, RequestResult]:
    """Every request's final result (fails the test if one is still live after the bound)."""
    results = await asyncio.wait_for(
        asyncio.gather(*(cp.get_result(rid) for rid in request_ids)), timeout_s
    )
    for result in results:
        assert result.status.is_terminal, result
    return {r.request_id: r for r in results}


@dataclass(frozen=True)
class EngineCounters:
    """One ``/metrics`` scrape: sample name → value summed over label sets, plus
    ``vllm:request_success_total{<finished_reason>}`` entries split by reason."""

    values: dict[str, float]

    def __getitem__(self, name: str) -> float:
        return self.values.get(name, 0.0)

    def __sub__(self, other: EngineCounters) -> dict[str, float]:
        return {k: v - other[k] for k, v in self.values.items()}

    @classmethod
    async def scrape(cls, server: VllmServer, timeout_s: float = 60.0) -> EngineCounters:
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(f"{server.base_url}/metrics") as resp,
        ):
            assert resp.status == 200, resp.status
            text = await resp.text()
        return cls(parse_metrics(text))


def parse_metrics(text: str) -> dict[str, float]:
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            keys = [sample.name]
            if "finished_reason" in sample.labels:
                keys.append(f"{sample.name}{{{sample.labels['finished_reason']}}}")
            for key in keys:
                values[key] = values.get(key, 0.0) + sample.value
    return values


# Engine steps, counted by vLLM's front end once per batch of outputs its engine core sends --
# also for requests the front end has already dropped. So unlike `generation_tokens_total`, which
# only counts tokens of requests the front end still holds, it shows whether an abort reached the
# engine core: had it not, the steps would go on to the request's last token.
ENGINE_STEPS = "vllm:iteration_tokens_total_count"


async def engine_idle(server: VllmServer) -> bool:
    """True when the engine reports nothing running and nothing waiting."""
    counters = await EngineCounters.scrape(server)
    return counters["vllm:num_requests_running"] == 0 == counters["vllm:num_requests_waiting"]


def kill_server(server: VllmServer) -> None:
    """SIGKILL the server's whole process group (API server, engine core, worker): a crash,
    not a shutdown. ``server.stop`` afterwards only reaps what is left."""
    assert server.process is not None
    os.killpg(server.process.pid, signal.SIGKILL)
    server.process.wait(timeout=30)

"""Backend that runs every instance on an in-process simulated engine.

Each registered :class:`ExecutionInstance` gets its own simulated vLLM server, started lazily in
this process on a loopback port, with an engine built from the instance's own description (model,
GPU, TP, PP). Requests then go through the ordinary HTTP backend, so the control plane sees the
exact bytes, timings, health answers and ``/metrics`` a real vLLM would give — one code path for
the wire format, and fault injection works the same (``backend.server(instance_id).set_faults``).

The instance's ``host``/``port`` are ignored: the backend maps instance ids to its servers.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

from vllm_control_plane.backends.base import Backend, BackendEvent, LoadSample, Timeouts
from vllm_control_plane.backends.openai_http import OpenAIHTTPBackend
from vllm_control_plane.core.estimator import resolve_gpu
from vllm_control_plane.sim.launcher import SimServer
from vllm_control_plane.sim.profiles import get_model
from vllm_control_plane.sim.types import EngineSpec
from vllm_control_plane.types import ExecutionInstance, RequestMetadata


def engine_spec_for(instance: ExecutionInstance, seed: int = 0) -> EngineSpec:
    """The simulated engine that models ``instance`` (unknown model → ValueError)."""
    model = get_model(instance.model_name)
    return EngineSpec(
        model=model.name,
        gpu=resolve_gpu(instance).name,
        tp=instance.tensor_parallel_size,
        pp=instance.pipeline_parallel_size,
        seed=seed,
        served_model_name=instance.api_model_name,
    )


class SimulatedBackend(Backend):
    """One simulated vLLM server per instance, all in this process."""

    def __init__(
        self,
        *,
        time_scale: float = 1.0,
        seed: int = 0,
        timeouts: Timeouts | None = None,
    ) -> None:
        self.time_scale = time_scale
        self.seed = seed
        self._http = OpenAIHTTPBackend(timeouts)
        self._servers: dict[str, SimServer] = {}
        self._targets: dict[str, ExecutionInstance] = {}
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        await self._http.start()

    async def close(self) -> None:
        servers, self._servers = list(self._servers.values()), {}
        self._targets.clear()
        await asyncio.gather(*(s.close() for s in servers), return_exceptions=True)
        await self._http.close()

    def server(self, instance_id: str) -> SimServer:
        """The simulated server behind an instance (KeyError before its first use)."""
        return self._servers[instance_id]

    async def ensure(self, instance: ExecutionInstance) -> SimServer:
        """Start the instance's simulated server if it is not running yet."""
        server = self._servers.get(instance.instance_id)
        if server is not None:
            return server
        async with self._lock:
            server = self._servers.get(instance.instance_id)
            if server is None:
                seed = self.seed + len(self._servers)
                server = SimServer(
                    engine_spec_for(instance, seed),
                    time_scale=self.time_scale,
                    name=instance.instance_id,
                )
                await server.start()
                self._servers[instance.instance_id] = server
                self._targets[instance.instance_id] = dataclasses.replace(
                    instance, host="127.0.0.1", port=server.port, scheme="http"
                )
        return server

    async def _target(self, instance: ExecutionInstance) -> ExecutionInstance:
        target = self._targets.get(instance.instance_id)
        if target is None:
            await self.ensure(instance)
            target = self._targets[instance.instance_id]
        return target

    async def generate(
        self, instance: ExecutionInstance, request: RequestMetadata
    ) -> AsyncIterator[BackendEvent]:
        target = await self._target(instance)
        events = self._http.generate(target, request)
        try:
            async for event in events:
                yield event
        finally:
            await events.aclose()  # type: ignore[attr-defined]

    async def check_health(self, instance: ExecutionInstance) -> bool:
        return await self._http.check_health(await self._target(instance))

    async def scrape(self, instance: ExecutionInstance) -> LoadSample | None:
        return await self._http.scrape(await self._target(instance))

"""``Gateway``: the long-lived state behind the HTTP routes.

It owns the :class:`ControlPlaneManager` (with the engine backend wrapped so usage frames and
engine errors can be passed through), the embedded simulated fleet, API-key and admin-token
checks, the Prometheus series and the map from client-facing model names to fleet models. The
route modules are thin functions over it; nothing here knows about aiohttp.

Lifecycle: :meth:`start` starts the simulated servers, registers every instance and starts the
manager; :meth:`stop` stops taking requests, gives in-flight ones ``grace_s`` to finish, then
cancels the rest (aborting them on their engines) and closes the fleet. :meth:`reload` applies a
new config without a restart (see ``reload.py``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from vllm_control_plane.backends.base import Backend
from vllm_control_plane.backends.openai_http import OpenAIHTTPBackend
from vllm_control_plane.config import (
    ControlPlaneConfig,
    InstanceConfig,
    SimulatedInstanceConfig,
    load_config,
)
from vllm_control_plane.gateway.auth import Authenticator
from vllm_control_plane.gateway.errors import GatewayError, model_not_found, no_instance
from vllm_control_plane.gateway.fleet import EmbeddedFleet
from vllm_control_plane.gateway.metrics import GatewayMetrics
from vllm_control_plane.gateway.passthrough import CapturingBackend
from vllm_control_plane.manager import ControlPlaneManager
from vllm_control_plane.types import ExecutionInstance

log = logging.getLogger(__name__)


class Gateway:
    """State shared by the client, admin and metrics routes."""

    def __init__(
        self,
        config: ControlPlaneConfig,
        *,
        config_path: str | Path | None = None,
        backend: Backend | None = None,
    ) -> None:
        self.config = config
        self.config_path = Path(config_path) if config_path is not None else None
        self.backend = CapturingBackend(backend or OpenAIHTTPBackend(config.backend_timeouts()))
        self.cp = ControlPlaneManager(backend=self.backend, **config.manager_kwargs())
        self.auth = Authenticator(config)
        self.metrics = GatewayMetrics(self.cp.get_status, self.cp.get_instances)
        self.fleet = EmbeddedFleet()
        self.accepting = False
        self.started_at = time.time()
        self._models: dict[str, str] = {}
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._side_tasks: set[asyncio.Task[None]] = set()
        self._reload_lock = asyncio.Lock()
        self.stopping_step = ""  # what stop() is doing (named when a shutdown overruns)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Start simulated servers, register every instance, start the manager."""
        try:
            for sim in self.config.simulated:
                self._register(await self.fleet.start_server(sim, self.config.prices))
            for inst in self.config.execution_instances():
                self._register(inst)
            await self.cp.start()
        except BaseException:
            await self.fleet.close()
            raise
        self.accepting = True

    async def stop(self, grace_s: float = 0.0) -> None:
        """Stop taking requests; in-flight ones get ``grace_s`` to finish, then are cancelled."""
        self.accepting = False
        if grace_s > 0 and self._in_flight:
            self.stopping_step = f"waiting for {self._in_flight} in-flight request(s)"
            try:
                await asyncio.wait_for(self._idle.wait(), grace_s)
            except asyncio.TimeoutError:
                log.warning("%d request(s) still running after %gs: cancelling", self._in_flight,
                            grace_s)  # fmt: skip
        self.stopping_step = "stopping the control plane (cancel requests, close engine links)"
        await self.cp.stop()
        self.stopping_step = "stopping background tasks (reload, instance removal)"
        for task in list(self._side_tasks):
            task.cancel()
        await asyncio.gather(*self._side_tasks, return_exceptions=True)
        self.stopping_step = f"stopping the embedded simulated fleet ({len(self.fleet)} server(s))"
        await self.fleet.close()
        self.stopping_step = "stopped"

    def begin(self) -> None:
        """A client request entered the control plane (graceful shutdown waits for it)."""
        self._in_flight += 1
        self._idle.clear()

    def end(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0:
            self._idle.set()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    # ------------------------------------------------------------------ models
    def resolve_model(self, name: str | None) -> str | None:
        """The fleet model a client's ``model`` names (404 when no instance serves it)."""
        if name is None:
            return None
        model = self._models.get(name)
        if model is None:
            self._refresh_models()  # instances may have been added behind our back
            model = self._models.get(name)
            if model is None:
                raise model_not_found(name)
        return model

    def check_serving(self, model: str | None) -> None:
        """503 when no healthy, non-draining instance serves ``model`` right now."""
        for inst in self.cp.get_instances():
            serves = model is None or inst.model_name == model
            if serves and inst.is_healthy and inst.is_available:
                return
        what = f"model {model!r}" if model else "any model"
        raise no_instance(f"No healthy instance serves {what}.", self.config.server.retry_after_s)

    def model_names(self) -> list[str]:
        return sorted({i.model_name for i in self.cp.get_instances()})

    def _refresh_models(self) -> None:
        models: dict[str, str] = {}
        for inst in self.cp.get_instances():
            models[inst.model_name] = inst.model_name
            models.setdefault(inst.api_model_name, inst.model_name)
        self._models = models

    # ------------------------------------------------------------------ instances
    def _register(self, inst: ExecutionInstance) -> None:
        self.cp.register_instance(inst)
        self._refresh_models()

    async def add_instance(
        self, cfg: InstanceConfig | SimulatedInstanceConfig
    ) -> ExecutionInstance:
        """Register a real instance, or start and register a simulated one."""
        known = {i.instance_id for i in self.cp.get_instances()}
        name = cfg.name if isinstance(cfg, SimulatedInstanceConfig) else cfg.instance_id
        if name in known:
            raise GatewayError(
                409, f"instance {name!r} is already registered", "duplicate_instance"
            )
        if isinstance(cfg, SimulatedInstanceConfig):
            try:
                inst = await self.fleet.start_server(cfg, self.config.prices)
            except (ValueError, OSError) as e:
                raise GatewayError(400, f"cannot start simulated instance: {e}") from None
        else:
            inst = cfg.to_instance(self.config.prices)
        self._register(inst)
        return inst

    def remove_instance(self, instance_id: str) -> list[str]:
        """Unregister: no new dispatches; running requests finish (bounded by the drain
        timeout), then the instance (and its simulated server, if any) goes away."""
        running = list(self.cp.core.requests_on(instance_id))  # KeyError when unknown
        self.cp.unregister_instance(instance_id)
        self._refresh_models()
        self.spawn(self._retire(instance_id))
        return running

    async def _retire(self, instance_id: str) -> None:
        """Wait until the manager has let go of the instance, then stop its simulated server."""
        deadline = time.monotonic() + self.config.limits.drain_timeout_s + 5.0
        while time.monotonic() < deadline and self._registered(instance_id):
            await asyncio.sleep(0.05)
        self._refresh_models()
        if instance_id in self.fleet:
            await self.fleet.stop_server(instance_id)

    def _registered(self, instance_id: str) -> bool:
        return any(i.instance_id == instance_id for i in self.cp.get_instances())

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` in the background; :meth:`stop` cancels what is left."""
        task = asyncio.get_running_loop().create_task(coro)
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    # ------------------------------------------------------------------ reload
    async def reload(self, new: ControlPlaneConfig | None = None) -> dict[str, object]:
        """Apply ``new`` (default: re-read the config file) without dropping requests."""
        from vllm_control_plane.gateway.reload import apply_reload, plan_reload

        async with self._reload_lock:
            if new is None:
                if self.config_path is None:
                    raise GatewayError(409, "No config file to reload (started without --config).",
                                       "no_config_file")  # fmt: skip
                new = load_config(self.config_path)
            plan = plan_reload(self.config, new)
            report = await apply_reload(self, plan, new)
            self.config = new
            return report

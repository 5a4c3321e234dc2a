"""Start and stop simulated vLLM servers inside the current event loop.

How it works: :class:`SimServer` builds a :class:`~vllm_control_plane.sim.engine.SimEngine`, wraps
it in a :class:`~vllm_control_plane.sim.server.SimService` and serves that on an aiohttp
``AppRunner``/``TCPSite``. Several servers share one loop (tests, the control plane's embedded
fleet, ``vcp sim --fleet``). ``close()`` aborts every request, cuts every connection and cancels
the engine task, so nothing is left behind.

A startup-delay fault leaves the port unbound (connection refused) for that long; with
``port=0`` a free port is reserved first so ``url`` is known at once. Setting the delay at run
time through ``/admin/faults`` restarts the listener: the port closes, every connection is cut,
in-flight requests are aborted, and the port comes back after the delay (engine state, such as the
prefix cache and the counters, is kept).

Usage::

    async with SimServer(EngineSpec(model="llama-3-8b"), time_scale=0.1) as srv:
        ...  # talk to srv.url
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterable, Iterator
from typing import Any

from aiohttp import web

from vllm_control_plane.sim.engine import SimEngine
from vllm_control_plane.sim.faults import FaultConfig, FaultInjector
from vllm_control_plane.sim.server import DEFAULT_MAX_CHUNKS_PER_S, SimService, warm_up
from vllm_control_plane.sim.types import EngineSpec

log = logging.getLogger(__name__)

__all__ = ["SimFleet", "SimServer"]


class SimServer:
    """One simulated vLLM server on ``host:port`` (``port=0`` picks a free port)."""

    def __init__(
        self,
        spec: EngineSpec,
        host: str = "127.0.0.1",
        port: int = 0,
        faults: FaultConfig | None = None,
        time_scale: float = 1.0,
        legacy_metrics: bool = False,
        *,
        name: str | None = None,
        max_chunks_per_s: float = DEFAULT_MAX_CHUNKS_PER_S,
        enable_prompt_tokens_details: bool = False,
    ) -> None:
        self.spec = spec
        self.host = host
        self.name = name or spec.served_model_name or spec.model
        self._port = port
        self._options: dict[str, Any] = {
            "time_scale": time_scale,
            "legacy_metrics": legacy_metrics,
            "max_chunks_per_s": max_chunks_per_s,
            "enable_prompt_tokens_details": enable_prompt_tokens_details,
        }
        self._injector = FaultInjector(faults, seed=spec.seed)
        self._service: SimService | None = None
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._ready = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------ properties

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:8000`` (clients append ``/v1``)."""
        return f"http://{self.host}:{self._port}"

    @property
    def engine(self) -> SimEngine:
        return self._require_service().engine

    @property
    def service(self) -> SimService:
        return self._require_service()

    @property
    def faults(self) -> FaultConfig:
        """The current fault config (replaced, not mutated, on updates)."""
        return self._injector.config

    def set_faults(self, **patch: Any) -> FaultConfig:
        """Switch faults at run time, like ``POST /admin/faults``."""
        config = self._injector.update(patch)
        if patch.get("startup_delay_s") and self._service is not None:
            self._schedule_restart(config.startup_delay_s)
        return config

    @property
    def ready(self) -> bool:
        """True while the port is bound."""
        return self._ready.is_set()

    def _require_service(self) -> SimService:
        if self._service is None:
            raise RuntimeError("SimServer is not started")
        return self._service

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Build the engine and serve it; with a startup delay the port binds later."""
        if self._service is not None:
            return
        engine = SimEngine(self.spec)
        warm_up()
        self._service = SimService(
            engine, faults=self._injector, on_restart=self._schedule_restart, **self._options
        )
        self._runner = web.AppRunner(
            self._service.app, handler_cancellation=True, shutdown_timeout=1.0, access_log=None
        )
        await self._runner.setup()
        server = self._runner.server
        self._service.connections = lambda: list(server.connections) if server else []
        self._service.runner.start()
        delay = self._injector.config.startup_delay_s
        if delay > 0:
            if self._port == 0:
                self._port = _free_port(self.host)
            self._spawn(self._bind_after(delay))
        else:
            await self._bind()

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until the port is bound (after any startup delay)."""
        await asyncio.wait_for(self._ready.wait(), timeout)

    async def close(self) -> None:
        """Stop serving: abort requests, cut connections, stop the engine task."""
        service, runner = self._service, self._runner
        if service is None or runner is None:
            return
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._unbind()
        service.abort_all()
        _cut(service.connections())
        await runner.cleanup()
        await service.runner.stop()
        self._service = self._runner = None

    async def __aenter__(self) -> SimServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------ binding

    async def _bind(self) -> None:
        assert self._runner is not None
        self._site = web.TCPSite(self._runner, self.host, self._port, reuse_address=True)
        await self._site.start()
        if self._port == 0:
            self._port = _bound_port(self._site)
        self._ready.set()

    async def _unbind(self) -> None:
        self._ready.clear()
        site, self._site = self._site, None
        if site is not None:
            await site.stop()

    async def _bind_after(self, delay: float) -> None:
        await asyncio.sleep(delay)
        await self._bind()

    def _schedule_restart(self, delay: float) -> None:
        self._spawn(self._restart(delay))

    async def _restart(self, delay: float) -> None:
        await asyncio.sleep(0.05)  # let the admin answer go out first
        service = self._require_service()
        await self._unbind()
        service.abort_all()
        _cut(service.connections())
        log.info("%s: restarting, port closed for %.2fs", self.name, delay)
        await self._bind_after(delay)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class SimFleet:
    """Several simulated servers in this event loop, started and closed together."""

    def __init__(self, servers: Iterable[SimServer]) -> None:
        self.servers = list(servers)
        names = [s.name for s in self.servers]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate server names in fleet: {', '.join(dupes)}")

    @classmethod
    def from_config(cls, config: Any) -> SimFleet:
        """Build from a :class:`~vllm_control_plane.sim.fleet.FleetConfig`."""
        return cls(config.build_servers())

    def __getitem__(self, name: str) -> SimServer:
        for s in self.servers:
            if s.name == name:
                return s
        raise KeyError(f"no server named {name!r}; known: {', '.join(self.names)}")

    def __iter__(self) -> Iterator[SimServer]:
        return iter(self.servers)

    def __len__(self) -> int:
        return len(self.servers)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.servers]

    @property
    def urls(self) -> dict[str, str]:
        return {s.name: s.url for s in self.servers}

    async def start(self) -> None:
        started: list[SimServer] = []
        try:
            for s in self.servers:
                await s.start()
                started.append(s)
        except BaseException:
            for s in started:
                await s.close()
            raise

    async def close(self) -> None:
        await asyncio.gather(*(s.close() for s in self.servers))

    async def __aenter__(self) -> SimFleet:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _cut(connections: list[Any]) -> None:
    for conn in connections:
        transport = getattr(conn, "transport", None)
        if transport is not None:
            transport.abort()


def _free_port(host: str) -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _bound_port(site: web.TCPSite) -> int:
    server = site._server  # aiohttp keeps the asyncio Server here
    sockets = getattr(server, "sockets", None) or []
    return int(sockets[0].getsockname()[1])


def describe(server: SimServer) -> str:
    """One line per server for the console: name, URL and what it models."""
    s = server.spec
    delay = server.faults.startup_delay_s
    note = f" (port opens in {delay:g}s)" if delay > 0 and not server.ready else ""
    return (
        f"{server.name}: {server.url}{note}  model={s.served_model_name or s.model} "
        f"gpu={s.gpu} tp={s.tp} pp={s.pp}"
    )


async def serve_until_signal(fleet: SimFleet, announce: Any = print) -> None:
    """Start ``fleet``, announce each server, and run until SIGINT/SIGTERM; then close cleanly."""
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with fleet:
        for server in fleet:
            announce(describe(server))
        await stop.wait()

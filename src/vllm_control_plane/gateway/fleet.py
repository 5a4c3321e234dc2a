"""Embedded simulated instances: ``vcp sim`` servers started inside the gateway's event loop.

A config's ``simulated`` entries (and the default fleet when no config is given) become
:class:`~vllm_control_plane.sim.launcher.SimServer` objects on free loopback ports. The control
plane talks to them over HTTP exactly as it talks to real vLLM servers, so the embedded fleet
exercises the same code path as production. Servers can be added and removed at run time
(admin API, config reload).
"""

from __future__ import annotations

import asyncio

from vllm_control_plane.config import SimulatedInstanceConfig
from vllm_control_plane.sim.launcher import SimServer
from vllm_control_plane.types import ExecutionInstance


class EmbeddedFleet:
    """The simulated servers this gateway runs, by instance id."""

    def __init__(self) -> None:
        self._servers: dict[str, SimServer] = {}
        self._configs: dict[str, SimulatedInstanceConfig] = {}

    def __contains__(self, instance_id: str) -> bool:
        return instance_id in self._servers

    def __len__(self) -> int:
        return len(self._servers)

    @property
    def configs(self) -> dict[str, SimulatedInstanceConfig]:
        return dict(self._configs)

    async def start_server(
        self, cfg: SimulatedInstanceConfig, prices: dict[str, float] | None = None
    ) -> ExecutionInstance:
        """Start one server and return the instance that points at it."""
        if cfg.name in self._servers:
            raise ValueError(f"a simulated instance named {cfg.name!r} is already running")
        server = SimServer(
            cfg.to_spec(),
            host=cfg.host,
            port=cfg.port,
            faults=cfg.faults,
            time_scale=1.0 if cfg.time_scale is None else cfg.time_scale,
            legacy_metrics=bool(cfg.legacy_metrics),
            name=cfg.name,
        )
        await server.start()  # ValueError: unknown model/GPU, does not fit; OSError: port
        self._servers[cfg.name] = server
        self._configs[cfg.name] = cfg
        return cfg.to_instance(server.host, server.port, prices)

    def server(self, instance_id: str) -> SimServer:
        """The running simulated server behind ``instance_id`` (KeyError if none)."""
        return self._servers[instance_id]

    async def stop_server(self, instance_id: str) -> None:
        server = self._servers.pop(instance_id, None)
        self._configs.pop(instance_id, None)
        if server is not None:
            await server.close()

    async def close(self) -> None:
        servers = list(self._servers.values())
        self._servers.clear()
        self._configs.clear()
        await asyncio.gather(*(s.close() for s in servers), return_exceptions=True)

    def describe(self, instance_id: str) -> str:
        """One console line: id, URL and what the server models."""
        s = self._servers[instance_id]
        spec = s.spec
        return (
            f"{instance_id}: {s.url}  model={spec.served_model_name or spec.model} "
            f"gpu={spec.gpu} tp={spec.tp} pp={spec.pp}"
        )

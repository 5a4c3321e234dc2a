"""Active health checks and load scraping, one loop for the whole fleet.

Every ``scrape_interval`` the monitor reads each instance's ``/metrics`` (vLLM's running and
waiting queues, KV usage) and every ``health_interval`` its ``/health``. An instance leaves
rotation after ``unhealthy_threshold`` consecutive failed checks and returns after
``healthy_threshold`` consecutive good ones: one lost packet must not eject a server, and one lucky
answer must not readmit a sick one. All calls for one round run concurrently, each bounded by the
backend's timeouts, so one hung server cannot stall the others.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from vllm_control_plane.backends.base import Backend, LoadSample
from vllm_control_plane.types import ExecutionInstance

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MonitorConfig:
    health_interval: float = 1.0
    scrape_interval: float = 0.5
    unhealthy_threshold: int = 2
    healthy_threshold: int = 2


class HealthTracker:
    """Consecutive-result thresholds per instance (pure; the loop feeds it)."""

    def __init__(self, unhealthy_threshold: int, healthy_threshold: int) -> None:
        self._down, self._up = unhealthy_threshold, healthy_threshold
        self._fails: dict[str, int] = {}
        self._oks: dict[str, int] = {}

    def observe(self, instance_id: str, ok: bool, currently_healthy: bool) -> bool | None:
        """Record one check; return the new health when it should change, else None."""
        if ok:
            self._fails[instance_id] = 0
            self._oks[instance_id] = self._oks.get(instance_id, 0) + 1
            if not currently_healthy and self._oks[instance_id] >= self._up:
                return True
        else:
            self._oks[instance_id] = 0
            self._fails[instance_id] = self._fails.get(instance_id, 0) + 1
            if currently_healthy and self._fails[instance_id] >= self._down:
                return False
        return None

    def forget(self, instance_id: str) -> None:
        self._fails.pop(instance_id, None)
        self._oks.pop(instance_id, None)


class FleetMonitor:
    """Runs the health and scrape loops and reports through two callbacks."""

    def __init__(
        self,
        backend: Backend,
        instances: Callable[[], list[ExecutionInstance]],
        on_health: Callable[[str, bool], None],
        on_load: Callable[[str, LoadSample], None],
        config: MonitorConfig | None = None,
    ) -> None:
        self.config = config or MonitorConfig()
        self._backend = backend
        self._instances = instances
        self._on_health = on_health
        self._on_load = on_load
        self.tracker = HealthTracker(self.config.unhealthy_threshold, self.config.healthy_threshold)
        self.stopped = False

    def stop(self) -> None:
        """Make ``run`` return at its next step. Needed besides task cancellation because an
        HTTP client timeout racing a cancel can turn the CancelledError into a TimeoutError,
        which the checks treat as a failed probe."""
        self.stopped = True

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        next_health = loop.time()
        self.stopped = False
        while not self.stopped:
            now = loop.time()
            if now >= next_health:
                next_health = now + self.config.health_interval
                await self.check_health_once()
            await self.scrape_once()
            await asyncio.sleep(self.config.scrape_interval)

    async def check_health_once(self) -> None:
        instances = self._instances()
        results = await asyncio.gather(*(self._backend.check_health(i) for i in instances))
        for inst, ok in zip(instances, results, strict=True):
            change = self.tracker.observe(inst.instance_id, ok, inst.is_healthy)
            if change is not None:
                log.warning(
                    "instance %s is now %s", inst.instance_id, "healthy" if change else "unhealthy"
                )
                self._on_health(inst.instance_id, change)

    async def scrape_once(self) -> None:
        instances = [i for i in self._instances() if i.is_healthy]
        samples = await asyncio.gather(*(self._backend.scrape(i) for i in instances))
        for inst, sample in zip(instances, samples, strict=True):
            if sample is not None:
                self._on_load(inst.instance_id, sample)

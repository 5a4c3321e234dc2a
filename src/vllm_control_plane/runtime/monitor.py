"""Active health checks and load scraping of the whole fleet.

Two independent loops: every ``health_interval`` the monitor calls each instance's ``/health``,
every ``scrape_interval`` it reads each healthy instance's ``/metrics`` (vLLM's running and
waiting queues, KV usage). They are separate so a slow scrape never delays a health verdict.
An instance leaves rotation after ``unhealthy_threshold`` consecutive failed checks and returns
after ``healthy_threshold`` consecutive good ones: one lost packet must not eject a server, and
one lucky answer must not readmit a sick one. Each check is bounded by ``health_timeout`` (a
check that takes longer has failed) and all checks of one round run concurrently, so one hung
server cannot stall the others.

Worst-case time to eject a dead server ≈ ``unhealthy_threshold × health_interval`` (plus
``health_timeout`` for a server that hangs instead of refusing); to readmit a recovered one ≈
``healthy_threshold × health_interval``. Measured figures: docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from vllm_control_plane.backends._timeout import bounded
from vllm_control_plane.backends.base import Backend, LoadSample
from vllm_control_plane.types import ExecutionInstance

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MonitorConfig:
    health_interval: float = 1.0
    """Seconds between health-check rounds."""
    scrape_interval: float = 0.5
    """Seconds between ``/metrics`` scrapes (load signals for routing and saturation)."""
    unhealthy_threshold: int = 2
    """Consecutive failed checks before an instance leaves rotation."""
    healthy_threshold: int = 2
    """Consecutive good checks before it returns."""
    health_timeout: float = 2.0
    """A health check not answered within this many seconds has failed."""

    def __post_init__(self) -> None:
        if min(self.health_interval, self.scrape_interval, self.health_timeout) <= 0:
            raise ValueError("MonitorConfig intervals and health_timeout must be > 0")
        if self.unhealthy_threshold < 1 or self.healthy_threshold < 1:
            raise ValueError("MonitorConfig thresholds must be >= 1")


class HealthTracker:
    """Consecutive-result thresholds per instance (pure; the loop feeds it).

    It keeps its own verdict per instance (healthy until proven otherwise), independent of
    whatever else may take an instance out of rotation (a circuit breaker, a drain)."""

    def __init__(self, unhealthy_threshold: int, healthy_threshold: int) -> None:
        self._down, self._up = unhealthy_threshold, healthy_threshold
        self._streak: dict[str, int] = {}  # >0: consecutive oks, <0: consecutive failures
        self._healthy: dict[str, bool] = {}

    def healthy(self, instance_id: str) -> bool:
        return self._healthy.get(instance_id, True)

    def observe(self, instance_id: str, ok: bool) -> bool | None:
        """Record one check; return the new verdict when it changes, else None."""
        streak = self._streak.get(instance_id, 0)
        streak = max(streak, 0) + 1 if ok else min(streak, 0) - 1
        self._streak[instance_id] = streak
        healthy = self.healthy(instance_id)
        if healthy and streak <= -self._down:
            self._healthy[instance_id] = False
            return False
        if not healthy and streak >= self._up:
            self._healthy[instance_id] = True
            return True
        return None

    def forget(self, instance_id: str) -> None:
        self._streak.pop(instance_id, None)
        self._healthy.pop(instance_id, None)


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
        self.stopped = False
        loops = [
            asyncio.ensure_future(self._every(self.config.health_interval, self.check_health_once)),
            asyncio.ensure_future(self._every(self.config.scrape_interval, self.scrape_once)),
        ]
        try:
            await asyncio.gather(*loops)
        finally:
            for task in loops:
                task.cancel()
            await asyncio.gather(*loops, return_exceptions=True)

    async def _every(self, interval: float, step: Callable[[], object]) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while not self.stopped:
            try:
                await step()  # type: ignore[misc]
            except Exception:  # a bug in one round must not end monitoring for good
                log.exception("fleet monitor round failed")
            next_at = max(next_at + interval, loop.time())
            await asyncio.sleep(next_at - loop.time())

    async def check_health_once(self) -> None:
        instances = self._instances()
        results = await asyncio.gather(*(self._check(i) for i in instances))
        if self.stopped:
            return
        for inst, ok in zip(instances, results, strict=True):
            change = self.tracker.observe(inst.instance_id, ok)
            if change is not None:
                log.warning(
                    "instance %s is now %s (health checks)",
                    inst.instance_id,
                    "healthy" if change else "unhealthy",
                )
                self._on_health(inst.instance_id, change)

    async def _check(self, instance: ExecutionInstance) -> bool:
        with contextlib.suppress(asyncio.TimeoutError):
            async with bounded(self.config.health_timeout):
                return await self._backend.check_health(instance)
        return False

    async def scrape_once(self) -> None:
        instances = [i for i in self._instances() if self.tracker.healthy(i.instance_id)]
        samples = await asyncio.gather(*(self._backend.scrape(i) for i in instances))
        if self.stopped:
            return
        for inst, sample in zip(instances, samples, strict=True):
            if sample is not None:
                self._on_load(inst.instance_id, sample)

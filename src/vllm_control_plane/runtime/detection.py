"""Failure detection: which instances are in rotation, fed by health checks and request outcomes.

Carries out what the pure pieces decide: the fleet monitor's health verdicts and each
instance's circuit breaker (:mod:`.circuit`) set or clear a reason in :class:`.rotation.Rotation`;
when an instance's in-rotation verdict changes, the core's ``set_health`` is called, which is all
the core knows about it. Half-open circuits get their probe (:mod:`.probe`) as a task of the
caller's choosing. Requests already running on an instance that leaves rotation are not touched:
their own timeouts bound them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from vllm_control_plane.backends.base import Backend, Finished
from vllm_control_plane.core.core import ControlCore
from vllm_control_plane.runtime.circuit import CircuitBreakers, CircuitConfig, blames_instance
from vllm_control_plane.runtime.execution import Outcome
from vllm_control_plane.runtime.probe import probe_instance
from vllm_control_plane.runtime.rotation import Rotation

log = logging.getLogger(__name__)


class FailureDetector:
    """Rotation reasons, circuit breakers and probes of one fleet."""

    def __init__(
        self,
        core: ControlCore,
        backend: Backend,
        now: Callable[[], float],
        changed: Callable[[], None],
        config: CircuitConfig | None = None,
    ) -> None:
        self._core, self._backend, self._now, self._changed = core, backend, now, changed
        self.breakers = CircuitBreakers(config)
        self.rotation = Rotation()

    def forget(self, instance_id: str) -> None:
        self.breakers.forget(instance_id)
        self.rotation.forget(instance_id)

    def on_health(self, instance_id: str, healthy: bool) -> None:
        """The health checks' verdict changed."""
        if not self.registered(instance_id):
            return
        self._set_out(instance_id, "health", not healthy)
        if healthy:  # back according to /health: do not wait out the circuit's cooldown
            self.breakers.probe_soon(instance_id, self._now())
            self._changed()

    def on_attempt(self, instance_id: str, outcome: Outcome) -> None:
        """An attempt ended (None: cancelled, says nothing about the instance)."""
        if outcome is None or not self.registered(instance_id):
            return
        if isinstance(outcome, Finished):
            self.breakers.record_success(instance_id)
        elif blames_instance(outcome.kind, outcome.status) and self.breakers.record_failure(
            instance_id, self._now()
        ):
            log.warning(
                "instance %s: circuit opened after %d consecutive failures (last: %s)",
                instance_id, self.breakers.config.failure_threshold, outcome.kind,
            )  # fmt: skip
            self._set_out(instance_id, "circuit", True)

    def due_probes(self, now: float) -> list[Coroutine[Any, Any, None]]:
        """Probes to run now, one per circuit whose cooldown is over."""
        return [self._probe(iid) for iid in self.breakers.due_probes(now)]

    async def _probe(self, instance_id: str) -> None:
        ok = False
        if self.registered(instance_id):
            instance = self._core.instance(instance_id)
            timeout = self.breakers.config.probe_timeout_s
            try:
                ok = await probe_instance(self._backend, instance, timeout)
            except Exception:  # a failed probe, whatever broke: the circuit must leave half-open
                log.exception("probe of %s crashed", instance_id)
        closed = self.breakers.probe_result(instance_id, ok, self._now())
        if closed and self.registered(instance_id):
            log.warning("instance %s: probe succeeded, circuit closed", instance_id)
            self._set_out(instance_id, "circuit", False)

    def _set_out(self, instance_id: str, reason: str, out: bool) -> None:
        verdict = self.rotation.set(instance_id, reason, out)
        if verdict is not None:
            self._core.set_health(instance_id, verdict, self._now())
            self._changed()

    def registered(self, instance_id: str) -> bool:
        try:
            self._core.instance(instance_id)
        except KeyError:
            return False
        return True

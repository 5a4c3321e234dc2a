"""Passive failure detection: one circuit breaker per instance, fed by request outcomes.

Theory of operation
-------------------
Health checks only see ``/health``; an engine can answer it while failing every request (a 5xx
burst, a hung generation loop, a broken stream). So every finished attempt is also reported
here, and an instance whose last ``failure_threshold`` attempts all failed is taken out of
rotation (its circuit *opens*):

    CLOSED ──(threshold consecutive failures)──► OPEN ──(cooldown over)──► HALF_OPEN
      ▲                                            ▲                          │
      └───────────────(probe succeeded)────────────┼──────────────────────────┤
                                                   └─────(probe failed)───────┘

While OPEN no request is routed there. When the cooldown is over the instance is HALF_OPEN: the
runtime sends one small probe generation (never a client's request, so no client pays for the
test); success closes the circuit and the instance is back in rotation, failure re-opens it with
the cooldown doubled (up to ``max_open_s``), so a long outage costs a probe every ``max_open_s``,
not a storm; when the health checks see the instance come back, the next probe is sent at once.
Only failures that say something about the instance count (connection refused or lost,
timeouts, 5xx, malformed streams); a 4xx is the request's own fault and counts as neither
success nor failure.

Pure: no clock, no I/O. Every call takes ``now``; the runtime carries out what it returns.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class CircuitState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class CircuitConfig:
    """Knobs of the per-instance breakers (defaults: see docs/reliability.md)."""

    failure_threshold: int = 5
    """Consecutive failed attempts that open the circuit (0 disables passive detection)."""
    open_s: float = 1.0
    """Cooldown before the first probe after the circuit opens."""
    max_open_s: float = 30.0
    """Cap of the cooldown, which doubles after every failed probe."""
    probe_timeout_s: float = 10.0
    """A probe that has not finished by then counts as failed."""

    def __post_init__(self) -> None:
        if self.failure_threshold < 0:
            raise ValueError("CircuitConfig.failure_threshold must be >= 0")
        if self.open_s <= 0 or self.max_open_s < self.open_s or self.probe_timeout_s <= 0:
            raise ValueError("CircuitConfig needs 0 < open_s <= max_open_s and probe_timeout_s > 0")


@dataclass
class _Circuit:
    state: CircuitState = CircuitState.CLOSED
    failures: int = 0  # consecutive, while CLOSED
    cooldown_s: float = 0.0
    probe_at: float = 0.0  # OPEN: when the next probe is due
    opened_at: float | None = None


class CircuitBreakers:
    """The circuits of all instances. Methods return True when rotation must change."""

    def __init__(self, config: CircuitConfig | None = None) -> None:
        self.config = config or CircuitConfig()
        self._circuits: dict[str, _Circuit] = {}

    def state(self, instance_id: str) -> CircuitState:
        circuit = self._circuits.get(instance_id)
        return circuit.state if circuit is not None else CircuitState.CLOSED

    def is_closed(self, instance_id: str) -> bool:
        return self.state(instance_id) is CircuitState.CLOSED

    def opened_at(self, instance_id: str) -> float | None:
        circuit = self._circuits.get(instance_id)
        return circuit.opened_at if circuit is not None else None

    def record_success(self, instance_id: str) -> None:
        """An attempt on a CLOSED circuit ended well: the failure streak is broken."""
        circuit = self._circuits.get(instance_id)
        if circuit is not None and circuit.state is CircuitState.CLOSED:
            circuit.failures = 0

    def record_failure(self, instance_id: str, now: float) -> bool:
        """An attempt failed for a reason that blames the instance. True: the circuit opened."""
        cfg = self.config
        circuit = self._circuits.setdefault(instance_id, _Circuit())
        if circuit.state is not CircuitState.CLOSED or cfg.failure_threshold == 0:
            return False
        circuit.failures += 1
        if circuit.failures < cfg.failure_threshold:
            return False
        self._open(circuit, now, cfg.open_s)
        circuit.opened_at = now
        return True

    def due_probes(self, now: float) -> list[str]:
        """OPEN circuits whose cooldown is over; they become HALF_OPEN (probe them now)."""
        due = [
            iid
            for iid, c in self._circuits.items()
            if c.state is CircuitState.OPEN and c.probe_at <= now
        ]
        for iid in due:
            self._circuits[iid].state = CircuitState.HALF_OPEN
        return due

    def probe_result(self, instance_id: str, ok: bool, now: float) -> bool:
        """Outcome of the probe of a HALF_OPEN circuit. True: the circuit closed."""
        circuit = self._circuits.get(instance_id)
        if circuit is None or circuit.state is not CircuitState.HALF_OPEN:
            return False  # forgotten (unregistered) meanwhile
        if ok:
            circuit.state, circuit.failures, circuit.opened_at = CircuitState.CLOSED, 0, None
            return True
        self._open(circuit, now, min(circuit.cooldown_s * 2, self.config.max_open_s))
        return False

    def probe_soon(self, instance_id: str, now: float) -> None:
        """Another signal says the instance is back (its health checks pass again): probe it
        at the next chance instead of waiting out a cooldown that grew during the outage."""
        circuit = self._circuits.get(instance_id)
        if circuit is not None and circuit.state is CircuitState.OPEN:
            circuit.probe_at = min(circuit.probe_at, now)

    def forget(self, instance_id: str) -> None:
        self._circuits.pop(instance_id, None)

    @staticmethod
    def _open(circuit: _Circuit, now: float, cooldown_s: float) -> None:
        circuit.state = CircuitState.OPEN
        circuit.cooldown_s = cooldown_s
        circuit.probe_at = now + cooldown_s


def blames_instance(kind: str, status: int | None) -> bool:
    """Does a backend failure of this kind (and HTTP status) say the instance is sick?"""
    if kind == "http_status":
        return status is None or status >= 500 or status == 429
    return kind in ("connect", "timeout", "stream_error", "protocol", "engine_error")

"""Tunable bounds of the pure core, one frozen dataclass.

Every number here is a knob with a documented reason for its default (see docs/concepts.md);
none is a measurement. The runtime's pydantic config maps onto this class.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from vllm_control_plane.core.concurrency import AdaptiveConcurrency
from vllm_control_plane.types import RequestPriority


@dataclass(frozen=True)
class CoreLimits:
    """Bounds and thresholds of the control core."""

    max_queued: int = 10_000
    """Queued requests of all priorities together. When full, the newest request of the lowest
    priority below the newcomer's is shed (REJECTED); if none is lower, the newcomer is."""

    max_queued_per_priority: Mapping[RequestPriority, int] = field(default_factory=dict)
    """Optional caps per priority; a newcomer over its priority's cap is REJECTED."""

    history_size: int = 10_000
    """Finished request records kept for ``status``/``record`` (oldest evicted first)."""

    max_retries: int = 2
    """Re-dispatches of a request that failed before its first token (each on another instance)."""

    retry_backoff_s: float = 0.05
    """Delay before the first retry may dispatch; doubles with every further retry."""

    retry_backoff_max_s: float = 2.0
    """Cap of the doubling retry delay."""

    retry_jitter: float = 0.5
    """Each retry delay is stretched by a random factor in ``[1, 1 + retry_jitter)`` so that
    requests that failed together do not all come back at the same instant (0: no jitter)."""

    aging_s: float = 30.0
    """``priority``: a request that waited this long ranks with fresh requests one level higher."""

    saturation_waiting: int = 16
    """An instance whose scraped engine waiting queue exceeds this gets no new dispatch."""

    saturation_kv: float = 0.98
    """An instance whose scraped KV-cache usage exceeds this (0..1) gets no new dispatch."""

    default_output_tokens: int = 256
    """Output length assumed for a request without ``max_tokens`` (estimates only)."""

    hard_deadlines: bool = False
    """Treat every ``slo_deadline_ms`` as hard (per request: ``submit(hard_deadline=...)``)."""

    no_slo_slack_s: float = 60.0
    """``slo_aware``: a request without SLO is ordered as if its deadline were this far away."""

    adaptive_concurrency: AdaptiveConcurrency | None = None
    """When set, each instance's concurrency limit adapts below its ``max_concurrent_requests``
    to keep completed requests' TPOT inside their SLOs (core/concurrency.py); None: fixed caps."""

    max_skips_per_dispatch: int = 8
    """Deferred requests of one class that name no instance to wait for and may be passed over
    in one ``next_dispatches`` call before that class counts as blocked; bounds the work per
    call (requests that wait for named instances are parked instead and cost nothing)."""

    metrics_window: int = 10_000
    """Completed requests kept for latency percentiles."""

    rate_window_s: float = 60.0
    """Sliding window for requests/s and tokens/s."""

    latency_ewma_alpha: float = 0.1
    """Weight of the newest sample in an instance's ``avg_latency_ms``."""

    def __post_init__(self) -> None:
        positive_ints = ("max_queued", "history_size", "metrics_window", "default_output_tokens")
        for name in positive_ints:
            if getattr(self, name) < 1:
                raise ValueError(f"CoreLimits.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_retries < 0 or self.max_skips_per_dispatch < 0:
            raise ValueError("CoreLimits.max_retries and max_skips_per_dispatch must be >= 0")
        for name in ("retry_backoff_s", "retry_backoff_max_s", "retry_jitter",
                     "saturation_waiting"):  # fmt: skip
            if getattr(self, name) < 0:
                raise ValueError(f"CoreLimits.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("aging_s", "no_slo_slack_s", "rate_window_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"CoreLimits.{name} must be > 0, got {getattr(self, name)}")
        if not 0 < self.saturation_kv <= 1:
            raise ValueError(
                f"CoreLimits.saturation_kv must be in (0, 1], got {self.saturation_kv}"
            )
        if not 0 < self.latency_ewma_alpha <= 1:
            raise ValueError("CoreLimits.latency_ewma_alpha must be in (0, 1]")
        for prio, cap in self.max_queued_per_priority.items():
            RequestPriority.parse(prio)
            if cap < 0:
                raise ValueError(f"CoreLimits.max_queued_per_priority[{prio}] must be >= 0")

"""Adaptive per-instance concurrency limits: hold requests with loose SLOs back before the
engine's decode slows past the tight SLOs of the requests it runs.

Why: a fixed ``max_concurrent_requests`` is right for one workload only. Too high, and an engine
fed every request at once runs batches so large that time per output token (TPOT) misses the
tight SLOs of interactive traffic — while batch jobs with loose deadlines could have waited in
the control plane's queue, where the policy orders them behind interactive ones. Too low, and a
fleet that could serve more (long chats whose TPOT is far inside its SLO) is throttled, requests
queue, and whichever instance frees a slot first takes them, away from their cached prefix.

How it works (AIMD, as TCP's congestion window and Netflix's concurrency-limits): every request
that completes with a TPOT SLO gives a sample ``observed TPOT / TPOT SLO`` for its instance. The
instance's *protected* SLO is the tightest TPOT SLO among its recent samples; the samples of
requests with that SLO are smoothed by an EWMA. When the smoothed ratio exceeds ``target`` the
instance's limit is cut by ``backoff`` and the average starts afresh; samples of requests
dispatched before the last cut are then ignored — they describe the load before it, and counting
them would cut again and again for one overload (TCP cuts once per round trip for the same
reason). Otherwise, while the limit binds (the instance runs within one request of it), it grows
by ``increase / limit`` per sample — about ``increase`` per limit's worth of completions. The
limit stays within ``[min_limit, max_concurrent_requests]``; it starts at the configured cap.

The limit holds back only *elastic* requests — no TPOT SLO, or a looser one than the instance's
protected SLO — which can wait in the control plane's queue without missing their SLOs
(:meth:`ConcurrencyController.admit`). Requests of the protected class are never held by it:
when every request has the same SLO, cutting concurrency would only move their wait from TPOT
into TTFT, and a capped queue would hand them to whichever instance frees a slot first, away from
their cached prefixes. Requests without a TPOT SLO give no samples, so a fleet serving none keeps
its configured caps.

Pure: time is an argument; no I/O.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from vllm_control_plane.types import ExecutionInstance

_SLO_MEMORY = 64  # recent samples whose SLOs define an instance's protected (tightest) SLO


@dataclass(frozen=True)
class AdaptiveConcurrency:
    """Settings of the controller (``CoreLimits.adaptive_concurrency``; None: fixed caps)."""

    target: float = 0.8
    """Keep the smoothed observed/SLO TPOT ratio at or below this (headroom for noise)."""
    backoff: float = 0.85
    """Multiplicative cut of the limit when the ratio is above ``target``."""
    increase: float = 2.0
    """Additive growth per limit's worth of samples while the limit binds."""
    min_limit: int = 2
    """Floor of the limit: an instance always takes this many requests."""
    alpha: float = 0.2
    """EWMA weight of the newest sample."""

    def __post_init__(self) -> None:
        if self.target <= 0 or not 0 < self.backoff < 1 or not 0 < self.alpha <= 1:
            raise ValueError(
                "AdaptiveConcurrency needs target > 0, 0 < backoff < 1 and 0 < alpha <= 1"
            )
        if self.increase <= 0 or self.min_limit < 1:
            raise ValueError("AdaptiveConcurrency needs increase > 0 and min_limit >= 1")


@dataclass
class _State:
    limit: float
    ratio: float | None = None  # EWMA of observed / SLO TPOT of the protected class
    last_cut: float = float("-inf")
    slos: deque[float] = field(default_factory=lambda: deque(maxlen=_SLO_MEMORY))

    def protected(self) -> float:
        return min(self.slos)


class ConcurrencyController:
    """Per-instance limits under :class:`AdaptiveConcurrency` (see the module doc)."""

    def __init__(self, settings: AdaptiveConcurrency) -> None:
        self.settings = settings
        self._state: dict[str, _State] = {}

    def limit(self, instance_id: str) -> int | None:
        """The instance's current limit, or None before its first sample (the configured cap)."""
        st = self._state.get(instance_id)
        return None if st is None else int(st.limit)

    def smoothed_ratio(self, instance_id: str) -> float | None:
        st = self._state.get(instance_id)
        return None if st is None else st.ratio

    def observe(
        self,
        instance_id: str,
        tpot_ms: float,
        tpot_slo_ms: float,
        *,
        active: int,
        ceiling: int,
        dispatched_at: float,
        now: float,
    ) -> bool:
        """Feed the TPOT of a request dispatched at ``dispatched_at`` that completed at ``now``;
        True when the instance's whole limit changed."""
        s = self.settings
        floor = min(s.min_limit, ceiling)
        st = self._state.get(instance_id)
        if st is None:
            st = self._state[instance_id] = _State(float(ceiling))
        before = int(st.limit)
        st.slos.append(tpot_slo_ms)
        if tpot_slo_ms > st.protected() or dispatched_at < st.last_cut:
            return False  # elastic, or from before the last cut: not evidence about now
        sample = tpot_ms / tpot_slo_ms
        st.ratio = sample if st.ratio is None else st.ratio + s.alpha * (sample - st.ratio)
        if st.ratio > s.target:
            st.limit = max(floor, st.limit * s.backoff)
            st.last_cut, st.ratio = now, None
        elif active + 1 >= int(st.limit):
            st.limit = min(float(ceiling), st.limit + s.increase / st.limit)
        st.limit = min(max(st.limit, floor), float(ceiling))
        return int(st.limit) != before

    def admit(
        self, tpot_slo_ms: float | None, room: Sequence[ExecutionInstance]
    ) -> Sequence[ExecutionInstance]:
        """The instances of ``room`` a request with this TPOT SLO may go to now: all of them for
        the protected class; for an elastic request, those running fewer than their limit."""
        kept: list[ExecutionInstance] | None = None
        for k, inst in enumerate(room):
            st = self._state.get(inst.instance_id)
            held = (
                st is not None
                and inst.active_requests >= int(st.limit)
                and (tpot_slo_ms is None or tpot_slo_ms > st.protected())
            )
            if held and kept is None:
                kept = list(room[:k])
            elif not held and kept is not None:
                kept.append(inst)
        return room if kept is None else kept

    def forget(self, instance_id: str) -> None:
        self._state.pop(instance_id, None)

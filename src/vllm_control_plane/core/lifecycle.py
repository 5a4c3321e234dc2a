"""The request state machine and the record the core keeps per request.

Theory of operation
-------------------
A request moves through the states of :class:`RequestStatus` along the edges of
:data:`TRANSITIONS` and nowhere else; :meth:`RequestRecord.transition` raises
:class:`IllegalTransition` for any other move, so a bookkeeping bug surfaces at once instead of as
a wrong counter later.

    PENDING ──► QUEUED ──► SCHEDULED ──► RUNNING ──► COMPLETED
       │          │  ▲         │  │         │
       │          │  └─(retry)─┘  └─(retry)─┤ (retry only before the first token)
       ▼          ▼                         ▼
    REJECTED   REJECTED (shed) / CANCELLED / TIMEOUT /    FAILED / CANCELLED / TIMEOUT
               FAILED (a retry left without an instance)

Every terminal state is final. A record carries the timings the metrics are computed from
(``submitted_at`` … ``finished_at``, seconds on the core's clock) and the reason of its last
transition.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vllm_control_plane.core.interfaces import Prediction
from vllm_control_plane.types import (
    TERMINAL_STATUSES,
    RequestMetadata,
    RequestStatus,
    SchedulingDecision,
)

_S = RequestStatus

TRANSITIONS: dict[RequestStatus, frozenset[RequestStatus]] = {
    _S.PENDING: frozenset({_S.QUEUED, _S.REJECTED}),
    # QUEUED → REJECTED is load shedding (queue full) or a budget that can no longer be met;
    # QUEUED → FAILED a retry whose every remaining instance left rotation while it waited.
    _S.QUEUED: frozenset({_S.SCHEDULED, _S.CANCELLED, _S.REJECTED, _S.TIMEOUT, _S.FAILED}),
    # SCHEDULED → QUEUED and RUNNING → QUEUED are retries after a failure before the first token.
    _S.SCHEDULED: frozenset({_S.RUNNING, _S.QUEUED, _S.FAILED, _S.CANCELLED, _S.TIMEOUT}),
    _S.RUNNING: frozenset({_S.QUEUED, _S.COMPLETED, _S.FAILED, _S.CANCELLED, _S.TIMEOUT}),
    **{s: frozenset() for s in TERMINAL_STATUSES},
}

LIVE_STATUSES = frozenset({_S.PENDING, _S.QUEUED, _S.SCHEDULED, _S.RUNNING})
ON_INSTANCE_STATUSES = frozenset({_S.SCHEDULED, _S.RUNNING})


class IllegalTransition(RuntimeError):
    """The core (or its caller) tried a move the lifecycle does not allow."""


@dataclass(eq=False, slots=True)
class RequestRecord:
    """Everything the core knows about one request; the answer of ``ControlCore.record``.

    Fields below ``# bookkeeping`` belong to the core (queue position, retry state); read them,
    do not write them.
    """

    request: RequestMetadata
    model_name: str  # resolved (``request.model_name`` or the fleet's default model)
    prompt_tokens: int
    output_tokens: int  # max_tokens, or the default expectation; what estimates use
    submitted_at: float
    hard_deadline: bool = False
    prompt_text: str = ""
    block_hashes: tuple[int, ...] = ()
    status: RequestStatus = RequestStatus.PENDING
    reason: str | None = None  # why the last transition happened (rejections, failures, ...)
    instance_id: str | None = None  # where it runs / ran last
    decision: SchedulingDecision | None = None
    prediction: Prediction | None = None  # the estimate on the instance it was dispatched to
    scheduled_at: float | None = None
    started_at: float | None = None
    first_token_at: float | None = None
    finished_at: float | None = None
    completion_tokens: int = 0
    cached_tokens: int = 0
    finish_reason: str | None = None
    cost_usd: float = 0.0
    retries: int = 0
    error: str | None = None
    # bookkeeping
    seq: int = 0  # arrival order; the queue's tie-break
    excluded: set[str] = field(default_factory=set)  # instances that failed this request
    not_before: float = 0.0  # retry backoff: no dispatch before this time
    demoted: bool = False  # slo_aware: can no longer meet its deadline; served after feasible ones
    best_latency_ms: float | None = None  # cached best prediction at first need (stable keys)
    best_ttft_ms: float | None = None
    cost_mark: float = 0.0  # the instance's cost integral when this request was dispatched

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def deadline_at(self) -> float | None:
        """Absolute end-to-end deadline (seconds), if the request carries one."""
        slo = self.request.slo_deadline_ms
        return None if slo is None else self.submitted_at + slo / 1000.0

    @property
    def ttft_deadline_at(self) -> float | None:
        slo = self.request.ttft_slo_ms
        return None if slo is None else self.submitted_at + slo / 1000.0

    @property
    def e2e_ms(self) -> float | None:
        if self.finished_at is None or self.status is not RequestStatus.COMPLETED:
            return None
        return (self.finished_at - self.submitted_at) * 1000.0

    @property
    def latency_ms(self) -> float | None:
        """End-to-end latency of a completed request (alias of :attr:`e2e_ms`)."""
        return self.e2e_ms

    @property
    def queue_time_ms(self) -> float | None:
        """Submission → (last) dispatch; None if never dispatched."""
        if self.scheduled_at is None:
            return None
        return (self.scheduled_at - self.submitted_at) * 1000.0

    @property
    def slo_met(self) -> bool | None:
        """:meth:`met_slo` as a property."""
        return self.met_slo()

    @property
    def ttft_ms(self) -> float | None:
        if self.first_token_at is None:
            return None
        return (self.first_token_at - self.submitted_at) * 1000.0

    @property
    def tpot_ms(self) -> float | None:
        """(E2E − TTFT) / (output_tokens − 1); None with fewer than two output tokens."""
        e2e, ttft = self.e2e_ms, self.ttft_ms
        if e2e is None or ttft is None or self.completion_tokens < 2:
            return None
        return (e2e - ttft) / (self.completion_tokens - 1)

    def met_slo(self) -> bool | None:
        """True/False for a finished request that carried an SLO; None otherwise.

        Cancelled requests are not judged (the client withdrew them); failed, rejected and
        timed-out ones that carried an SLO did not meet it.
        """
        req = self.request
        e2e_slo, ttft_slo, tpot_slo = req.slo_deadline_ms, req.ttft_slo_ms, req.tpot_slo_ms
        if e2e_slo is None and ttft_slo is None and tpot_slo is None:  # no SLO (hot: inline)
            return None
        if not self.is_terminal or self.status is RequestStatus.CANCELLED:
            return None
        if self.status is not RequestStatus.COMPLETED:
            return False
        e2e, ttft = self.e2e_ms, self.ttft_ms
        if e2e_slo is not None and e2e is not None and not e2e <= e2e_slo:
            return False
        if ttft_slo is not None and ttft is not None and not ttft <= ttft_slo:
            return False
        tpot = self.tpot_ms if tpot_slo is not None else None
        return tpot is None or tpot <= tpot_slo  # type: ignore[operator]

    def transition(self, to: RequestStatus, now: float, reason: str | None = None) -> None:
        """Move to ``to`` or raise :class:`IllegalTransition`; terminal moves stamp finished_at."""
        if to not in TRANSITIONS[self.status]:
            raise IllegalTransition(
                f"request {self.request_id!r}: illegal transition {self.status.value} -> {to.value}"
            )
        self.status = to
        if reason is not None:
            self.reason = reason
        if to in TERMINAL_STATUSES:
            self.finished_at = now

"""What a scheduling policy is: an order, an admission rule and hard instance constraints.

Theory of operation
-------------------
The core asks a policy three things and carries out the answers:

* :meth:`SchedulingPolicy.order_key` — the request's static place in the queue, ``(lane,
  value)``, smaller first. It MUST NOT depend on ``now`` (write time-dependent orders as
  time-shifted constants) and MUST be stable while the request waits, so the queue never
  re-sorts. It MAY read ``rec.demoted`` (set by the core after a :class:`Demote` verdict).
* :meth:`SchedulingPolicy.admit` — at submission, a reason to refuse the request, or ``None``.
  Model, parallelism hint, cost budget and queue bounds are checked by the core for every
  policy; this hook adds the policy's own rule (e.g. a hard deadline that cannot be met).
* :meth:`SchedulingPolicy.place` — when the request reaches the head of its class, a
  :data:`Verdict`: a :class:`Placement` (ranked tiers of instances with room; the routing
  strategy picks one in the first non-empty tier — fallback is data, not control flow),
  :class:`Defer` (stay queued, let others pass), :class:`Demote` (re-queue with a later key) or
  :class:`Drop` (end it: REJECTED or TIMEOUT with a reason).

Policies are pure: no clock, no I/O; predictions come from the injected estimator. The cost
budget is a hard constraint for every policy (:meth:`SchedulingPolicy.budget_filter`).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, TypeAlias

from vllm_control_plane.core.interfaces import Estimator, Prediction
from vllm_control_plane.core.lifecycle import RequestRecord
from vllm_control_plane.core.limits import CoreLimits
from vllm_control_plane.core.queue import QueueKey
from vllm_control_plane.types import ExecutionInstance, RequestStatus

Instances: TypeAlias = Sequence[ExecutionInstance]


@dataclass(frozen=True, slots=True)
class Placement:
    """Dispatch to one instance of the first non-empty tier (all tiers hold instances with room)."""

    tiers: tuple[Instances, ...]
    reason: str
    predictions: dict[str, Prediction] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Defer:
    """Leave the request queued for now; requests behind it may pass.

    ``wait_for``: the instances it waits for (busy now). The core parks it until one of them
    gains a free slot, so it costs nothing meanwhile. ``None``: re-examined on every dispatch
    call (bounded by ``CoreLimits.max_skips_per_dispatch``).
    """

    reason: str
    wait_for: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class Demote:
    """Re-queue behind requests that can still be served well (the core sets ``rec.demoted``)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Drop:
    """End the request now with ``status`` (REJECTED or TIMEOUT) and ``reason``."""

    status: RequestStatus
    reason: str

    def __post_init__(self) -> None:
        if self.status not in (RequestStatus.REJECTED, RequestStatus.TIMEOUT):
            raise ValueError(f"Drop status must be REJECTED or TIMEOUT, not {self.status}")


Verdict: TypeAlias = Placement | Defer | Demote | Drop


@dataclass(frozen=True, slots=True)
class Candidates:
    """Where a request could go: ``room`` can take it now; ``everywhere()`` adds full ones.

    Both hold only healthy, available instances of the request's model that match its
    parallelism hint and did not fail it before. ``everywhere`` is lazy because most policies
    never need it.
    """

    room: Instances
    everywhere: Callable[[], Instances]


@dataclass(frozen=True, slots=True)
class FleetSignals:
    """What the adaptive policy watches besides outcomes (computed by the core)."""

    now: float
    queue_depth: int
    utilisation: float  # our active requests / concurrency budget of usable instances, 0..1
    price_spread: float  # max / min price per GPU-hour among instances of one model (>= 1)


@dataclass
class PolicyContext:
    """Injected collaborators of a policy."""

    estimator: Estimator
    limits: CoreLimits = field(default_factory=CoreLimits)
    # Healthy, available instances that could serve ``rec`` (full ones included).
    serving: Callable[[RequestRecord], Instances] = lambda rec: ()

    def predict(self, rec: RequestRecord, inst: ExecutionInstance) -> Prediction:
        return self.estimator.predict(inst, rec.prompt_tokens, rec.output_tokens)

    def predict_all(self, rec: RequestRecord, instances: Instances) -> dict[str, Prediction]:
        many = getattr(self.estimator, "predict_many", None)
        if many is not None:  # the default estimator's batched fast path
            return many(instances, rec.prompt_tokens, rec.output_tokens)  # type: ignore[no-any-return]
        predict, p, o = self.estimator.predict, rec.prompt_tokens, rec.output_tokens
        return {inst.instance_id: predict(inst, p, o) for inst in instances}

    def predict_idle(self, rec: RequestRecord, inst: ExecutionInstance) -> Prediction | None:
        """The prediction on ``inst`` idle (what its hardware can do at best), or None when
        the estimator offers no ``predict_floor``."""
        floor = getattr(self.estimator, "predict_floor", None)
        return None if floor is None else floor(inst, rec.prompt_tokens, rec.output_tokens)

    def best(self, rec: RequestRecord) -> tuple[float, float] | None:
        """(best TTFT ms, best latency ms) over the instances serving ``rec`` — on idle
        instances when the estimator offers ``predict_floor`` — cached on the record at first
        use so keys derived from it stay stable while it waits."""
        if rec.best_latency_ms is None:
            floor = getattr(self.estimator, "predict_floor", None)  # load-free, if offered
            predict = floor or self.estimator.predict
            p, o = rec.prompt_tokens, rec.output_tokens
            preds = [predict(i, p, o) for i in self.serving(rec)]
            if not preds:
                return None
            rec.best_ttft_ms = min(p.ttft_ms for p in preds)
            rec.best_latency_ms = min(p.latency_ms for p in preds)
        assert rec.best_ttft_ms is not None
        return rec.best_ttft_ms, rec.best_latency_ms


class SchedulingPolicy(abc.ABC):
    """Base class: FIFO-compatible defaults for admission and placement."""

    name: ClassVar[str]

    def __init__(self, ctx: PolicyContext) -> None:
        self.ctx = ctx

    @abc.abstractmethod
    def order_key(self, rec: RequestRecord) -> QueueKey:
        """Static queue key, smaller first (see module docstring)."""

    @property
    def label(self) -> str:
        """Name shown in decisions (the adaptive policy adds its active sub-policy)."""
        return self.name

    def admit(self, rec: RequestRecord, serving: Instances, now: float) -> str | None:
        """A reason to refuse ``rec`` at submission, or None. ``serving`` is non-empty."""
        return None

    def place(self, rec: RequestRecord, cands: Candidates, now: float) -> Verdict:
        """Default: any instance with room (within the cost budget, if any)."""
        filtered = self.budget_filter(rec, cands)
        if not isinstance(filtered, tuple):
            return filtered
        room, preds = filtered
        return Placement((room,), f"{self.name}: {len(room)} instance(s) with room", preds)

    def observe(self, rec: RequestRecord, signals: FleetSignals) -> bool:
        """A request ended. Return True when :meth:`order_key` changed meaning (re-key queue)."""
        return False

    def describe(self) -> dict[str, object]:
        """What the policy is doing now, for ``summary()``."""
        return {"policy": self.name}

    def budget_filter(
        self, rec: RequestRecord, cands: Candidates
    ) -> tuple[Instances, dict[str, Prediction]] | Defer | Drop:
        """Instances with room whose estimated cost fits ``cost_budget`` (all, without one).

        Over budget on every instance with room: wait if a full instance fits; otherwise the
        request can no longer be served within budget and is REJECTED with the estimate.
        """
        budget = rec.request.cost_budget
        if budget is None:
            return cands.room, {}
        preds = self.ctx.predict_all(rec, cands.room)
        fits = [i for i in cands.room if preds[i.instance_id].cost_usd <= budget]
        if fits:
            return fits, preds
        full = [i for i in cands.everywhere() if i.instance_id not in preds]
        wait_for = frozenset(
            i.instance_id for i in full if self.ctx.predict(rec, i).cost_usd <= budget
        )
        if wait_for:
            return Defer("waiting for an instance within the cost budget", wait_for)
        cheapest = min(p.cost_usd for p in preds.values())
        return Drop(
            RequestStatus.REJECTED,
            f"over cost budget: cheapest estimate ${cheapest:.6f} > budget ${budget:.6f}",
        )


PolicyFactory: TypeAlias = Callable[[PolicyContext], SchedulingPolicy]

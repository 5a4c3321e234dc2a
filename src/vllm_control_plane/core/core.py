"""``ControlCore``: the pure decision core the runtime and the benchmark drive.

Theory of operation
-------------------
The core owns the queue, the request records, the instance registry and the accounting; it
composes a scheduling policy (order, admission, hard constraints), a routing strategy (one
instance among those allowed) and an estimator. It never reads a clock or does I/O: every call
that depends on time takes ``now`` (seconds, any origin, non-decreasing) and returns decisions
the caller carries out.

A driver (the asyncio runtime, or the benchmark's virtual-time loop) does:

1. ``add_instance`` / ``set_health`` / ``update_load`` as it learns about the fleet;
2. ``submit`` for each arriving request (QUEUED, or REJECTED with a reason);
3. ``next_dispatches(now)`` after anything that may free room or add work, then starts each
   returned :class:`Dispatch` on its instance;
4. reports what happened: ``on_started``, ``on_first_token``, ``on_complete``, ``on_failed``
   (True = requeued for a retry elsewhere), ``cancel`` / ``on_timeout`` (returning the
   instance to abort, if any), and ``expire(now)`` for hard deadlines, whose next due time is
   ``next_wakeup()``.

Feedback for a request that already ended (e.g. a completion racing a cancel) is a no-op that
returns False; an unknown request id raises ``KeyError``; a move the lifecycle forbids raises
:class:`~vllm_control_plane.core.lifecycle.IllegalTransition`.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from vllm_control_plane.core.accounting import Accounting, Counters
from vllm_control_plane.core.concurrency import ConcurrencyController
from vllm_control_plane.core.cost import CostMeter, gpu_price, hourly_rate
from vllm_control_plane.core.estimator import RooflineEstimator, resolve_gpu
from vllm_control_plane.core.fleet import Fleet
from vllm_control_plane.core.interfaces import (
    Estimator,
    Prediction,
    RouteRequest,
    RoutingContext,
    RoutingStrategy,
)
from vllm_control_plane.core.lifecycle import ON_INSTANCE_STATUSES, IllegalTransition, RequestRecord
from vllm_control_plane.core.limits import CoreLimits
from vllm_control_plane.core.policies import (
    POLICIES,
    Candidates,
    Defer,
    Demote,
    FleetSignals,
    Placement,
    PolicyContext,
    SchedulingPolicy,
    Verdict,
    get_policy,
)
from vllm_control_plane.core.predictions import PredictionCache, cacheable
from vllm_control_plane.core.queue import ClassKey, RequestQueue
from vllm_control_plane.types import (
    ExecutionInstance,
    PerformanceMetrics,
    RequestMetadata,
    RequestStatus,
    SchedulingDecision,
)

_S = RequestStatus
_NO_OBSERVE = SchedulingPolicy.observe  # the base hook: learns nothing, needs no signals

__all__ = ["CancelResult", "ControlCore", "CoreLimits", "Dispatch", "DuplicateRequestId"]

# Why a request that failed before its first token is not retried when no instance is left for
# it: the retry goes only to instances in rotation that it has not failed on (docs/concepts.md).
NO_RETRY_TARGET = "no other healthy instance to retry on"


@dataclass(frozen=True, slots=True)
class Dispatch:
    """Start ``request`` on ``instance_id``: the core already counts it there (SCHEDULED)."""

    request_id: str
    instance_id: str
    decision: SchedulingDecision
    request: RequestMetadata
    prompt_tokens: int
    output_tokens: int  # the estimate's output length (max_tokens or the default)
    attempt: int  # 1 on the first dispatch, 2 after one retry, ...


class DuplicateRequestId(ValueError):
    """``submit`` of a ``request_id`` that is taken: a live request has it (``live``), or a
    request that completed still has it in the finished history. Nothing changed."""

    def __init__(self, request_id: str, status: RequestStatus, *, live: bool, kept: int) -> None:
        if live:
            message = f"request {request_id!r} is already in flight ({status.value})"
        else:
            message = (
                f"request {request_id!r} already completed; the id of a completed request "
                f"cannot be reused while its result is kept (the last {kept} finished requests)"
            )
        super().__init__(message)
        self.request_id = request_id
        self.status = status
        self.live = live


@dataclass(frozen=True, slots=True)
class CancelResult:
    """Outcome of ``cancel`` / ``on_timeout``."""

    request_id: str
    status: RequestStatus  # the request's status after the call
    changed: bool  # False: it had already ended, nothing was done
    abort_instance_id: str | None = None  # the runtime must abort the engine request here

    @property
    def cancelled(self) -> bool:
        """True when this call ended the request (alias of ``changed``)."""
        return self.changed


def _strategy_from(name: str | RoutingStrategy, ctx: RoutingContext) -> RoutingStrategy:
    if isinstance(name, RoutingStrategy):
        return name
    from vllm_control_plane.core.routing import get_strategy

    return get_strategy(name, ctx)


class ControlCore:
    """Queue + policy + router + estimator + accounting, driven with explicit time."""

    def __init__(
        self,
        policy: str = "fifo",
        strategy: str | RoutingStrategy = "load_balanced",
        *,
        estimator: Estimator | None = None,
        seed: int = 0,
        limits: CoreLimits | None = None,
    ) -> None:
        self.limits = limits or CoreLimits()
        self.estimator: Estimator = estimator or RooflineEstimator()
        self._fleet = Fleet(self.limits)
        # Policies and strategies the core builds read predictions through a cache that is
        # exact for estimators promising to depend only on instance state (core/predictions.py).
        self._predictions = (
            PredictionCache(self.estimator, self._fleet) if cacheable(self.estimator) else None
        )
        deciding: Estimator = self._predictions or self.estimator
        self._ctx = PolicyContext(deciding, self.limits, self._serving)
        self._policy: SchedulingPolicy = get_policy(policy, self._ctx)
        self._routing_ctx = RoutingContext(estimator=deciding, rng=random.Random(seed))
        self._jitter_rng = random.Random(seed + 1)  # retry backoff jitter, apart from routing
        self._strategy = _strategy_from(strategy, self._routing_ctx)
        self._queue = RequestQueue(self._policy.order_key)
        self._fleet.on_ready = self._wake
        adaptive = self.limits.adaptive_concurrency
        self._concurrency = ConcurrencyController(adaptive) if adaptive is not None else None
        self._live: dict[str, RequestRecord] = {}
        self._history: OrderedDict[str, RequestRecord] = OrderedDict()
        # Queued retries (requeued after a failure, not yet re-dispatched): checked whenever an
        # instance leaves rotation, so none waits for an instance that cannot take it.
        self._retrying: dict[str, RequestRecord] = {}
        self._on_instance: dict[str, set[str]] = {}
        self._meter = CostMeter()
        self._acct = Accounting(self.limits.metrics_window, self.limits.rate_window_s)
        self._seq = 0
        self._now = 0.0
        self._rekey_pending = False
        self._price_spread = 1.0
        # Called with every record that reaches its terminal state, whoever ended it (including
        # requests the core ends on its own: shed, orphaned, expired), so a driver can release
        # whatever it holds for the request. Must not call back into the core.
        self.on_terminal: Callable[[RequestRecord], None] | None = None

    # ---------------------------------------------------------------- policy and strategy ----
    @property
    def policy_name(self) -> str:
        return self._policy.name

    @property
    def strategy_name(self) -> str:
        return self._strategy.name

    @property
    def policy(self) -> SchedulingPolicy:
        return self._policy

    @property
    def strategy(self) -> RoutingStrategy:
        return self._strategy

    def set_policy(self, name: str) -> None:
        """Switch the scheduling policy live; queued requests are re-ordered by the new one."""
        self._policy = get_policy(name, self._ctx)
        self._queue.rekey(self._policy.order_key, self._now)

    def set_strategy(self, name: str | RoutingStrategy) -> None:
        """Switch the routing strategy live (it starts with no memory of earlier dispatches)."""
        self._strategy = _strategy_from(name, self._routing_ctx)

    @staticmethod
    def policies() -> list[str]:
        return list(POLICIES)

    # ------------------------------------------------------------------------ instances ----
    def add_instance(self, inst: ExecutionInstance) -> None:
        """Register an engine server. Its live counters start from zero and it is available
        (the core owns those fields from now on)."""
        inst.active_requests = 0
        inst.is_available = True
        self._fleet.add(inst)
        self._meter.add_instance(inst.instance_id, hourly_rate(inst, resolve_gpu(inst).name))
        self._on_instance[inst.instance_id] = set()
        self._update_price_spread()
        self._queue.wake_all()

    def remove_instance(self, instance_id: str) -> list[str]:
        """Unregister at once; returns the requests still running there (they finish or fail
        normally). Queued requests of a model no instance serves any more are REJECTED."""
        running = self.requests_on(instance_id)
        inst = self._fleet.remove(instance_id, busy=bool(running))
        inst.is_available = False
        self._strategy.on_instance_removed(instance_id)
        if not running:
            self._forget_instance(instance_id)
        self._update_price_spread()
        self._queue.wake_all()
        if not self._fleet.serves(inst.model_name):
            self._reject_orphans(inst.model_name, self._now)
        self._fail_stranded_retries(self._now)
        return running

    def drain_instance(self, instance_id: str) -> list[str]:
        """No new dispatches to the instance; returns the requests still running there."""
        self._set(instance_id, is_available=False)
        self._queue.wake_all()
        self._fail_stranded_retries(self._now)
        return self.requests_on(instance_id)

    def resume_instance(self, instance_id: str) -> None:
        """Undo :meth:`drain_instance`."""
        self._set(instance_id, is_available=True)
        self._queue.wake_all()

    def set_health(self, instance_id: str, healthy: bool, now: float) -> None:
        self._tick(now)
        changed = self._fleet.get(instance_id).is_healthy != healthy
        self._set(instance_id, is_healthy=healthy)
        if changed:
            self._queue.wake_all()
            if not healthy:
                self._fail_stranded_retries(now)

    def update_load(
        self, instance_id: str, running: int, waiting: int, kv_usage: float, now: float
    ) -> None:
        """Scraped engine gauges (``vllm:num_requests_running/waiting``, KV usage 0..1)."""
        self._tick(now)
        self._set(
            instance_id,
            num_requests_running=running,
            num_requests_waiting=waiting,
            kv_cache_usage=kv_usage,
        )

    def instances(self) -> list[ExecutionInstance]:
        return self._fleet.instances()

    def instance(self, instance_id: str) -> ExecutionInstance:
        """The registered instance (KeyError naming the registered ones if unknown)."""
        return self._fleet.get(instance_id)

    def requests_on(self, instance_id: str) -> list[str]:
        """Ids of requests scheduled or running on the instance."""
        self._fleet.get(instance_id)
        return sorted(self._on_instance.get(instance_id, ()))

    def _wake(self, inst: ExecutionInstance) -> None:
        free = inst.max_concurrent_requests - inst.active_requests
        self._queue.wake(inst.instance_id, max(1, free))

    def _set(self, instance_id: str, **fields: object) -> None:
        inst = self._fleet.get(instance_id)
        for name, value in fields.items():
            setattr(inst, name, value)
        self._fleet.refresh(inst)

    def _forget_instance(self, instance_id: str) -> None:
        self._fleet.forget(instance_id)
        if self._concurrency is not None:
            self._concurrency.forget(instance_id)
        self._meter.remove_instance(instance_id)
        self._on_instance.pop(instance_id, None)
        forget = getattr(self.estimator, "forget", None)
        if forget is not None:
            forget(instance_id)

    def _update_price_spread(self) -> None:
        spread = 1.0
        for model in self._fleet.models():
            prices = [gpu_price(i, resolve_gpu(i).name) for i in self._fleet.serving(model)]
            if prices and min(prices) > 0:
                spread = max(spread, max(prices) / min(prices))
        self._price_spread = spread

    def _serving(self, rec: RequestRecord) -> Sequence[ExecutionInstance]:
        hint = rec.request.parallelism_hint
        usable = self._fleet.usable(rec.model_name, hint, rec.excluded)
        return usable or self._fleet.serving(rec.model_name, hint)

    # ------------------------------------------------------------------------ admission ----
    def submit(
        self,
        req: RequestMetadata,
        now: float,
        *,
        prompt_tokens: int,
        prompt_text: str = "",
        block_hashes: tuple[int, ...] = (),
        hard_deadline: bool | None = None,
    ) -> RequestRecord:
        """Admit a request: QUEUED, or REJECTED with ``record.reason``.

        ``hard_deadline`` (default ``limits.hard_deadlines``) makes ``slo_deadline_ms`` hard: the
        request times out if still queued at its deadline and is refused when no instance can
        meet it.

        Request ids: an id in use by a live request, or by a request that COMPLETED and is still
        in the finished history (``limits.history_size``), raises :class:`DuplicateRequestId` (a
        ``ValueError``) and changes nothing — a completed result is never replaced. An id whose
        request ended without an answer (rejected, failed, cancelled, timed out) may be
        submitted again: that is the client's retry, and the new request replaces the old
        record (both stay counted).
        """
        if prompt_tokens < 1:
            raise ValueError(f"prompt_tokens must be >= 1, got {prompt_tokens}")
        self._check_id_free(req.request_id)
        self._tick(now)
        rec = self._new_record(req, now, prompt_tokens, prompt_text, block_hashes, hard_deadline)
        self._history.pop(req.request_id, None)
        self._live[req.request_id] = rec
        self._acct.on_submitted(now)
        reason = self._admission(rec, now)
        if reason is not None:
            self._finish(rec, _S.REJECTED, now, reason)
        else:
            rec.transition(_S.QUEUED, now, "queued")
            self._queue.push(rec, now)
        return rec

    def _check_id_free(self, request_id: str) -> None:
        live = self._live.get(request_id)
        if live is not None:
            raise DuplicateRequestId(request_id, live.status, live=True, kept=0)
        done = self._history.get(request_id)
        if done is not None and done.status is _S.COMPLETED:
            raise DuplicateRequestId(
                request_id, done.status, live=False, kept=self.limits.history_size
            )

    def _new_record(
        self,
        req: RequestMetadata,
        now: float,
        prompt_tokens: int,
        prompt_text: str,
        block_hashes: tuple[int, ...],
        hard_deadline: bool | None,
    ) -> RequestRecord:
        self._seq += 1
        return RequestRecord(
            request=req,
            model_name=req.model_name or self._fleet.default_model(),
            prompt_tokens=prompt_tokens,
            output_tokens=req.max_tokens or self.limits.default_output_tokens,
            submitted_at=now,
            hard_deadline=self.limits.hard_deadlines if hard_deadline is None else hard_deadline,
            prompt_text=prompt_text,
            block_hashes=tuple(block_hashes),
            seq=self._seq,
        )

    def _admission(self, rec: RequestRecord, now: float) -> str | None:
        """Why ``rec`` cannot be queued, or None (may shed a lower-priority request)."""
        if not self._fleet.serves(rec.model_name):
            served = self._fleet.models()
            if not served:
                return "no instances registered"
            return f"no instance serves model {rec.model_name!r}; served: {', '.join(served)}"
        hint = rec.request.parallelism_hint
        serving = self._fleet.serving(rec.model_name, hint)
        if not serving:
            return (
                f"no instance of model {rec.model_name!r} uses parallelism "
                f"{hint.value if hint else None!r}; layouts: {self._layouts(rec.model_name)}"
            )
        return (
            self._budget_reason(rec, serving)
            or self._policy.admit(rec, serving, now)
            or self._make_room(rec, now)
        )

    def _layouts(self, model: str) -> str:
        return ", ".join(
            f"{i.instance_id}(tp={i.tensor_parallel_size},pp={i.pipeline_parallel_size},"
            f"dp={i.data_parallel_size})"
            for i in self._fleet.serving(model)
        )

    def _budget_reason(
        self, rec: RequestRecord, serving: Sequence[ExecutionInstance]
    ) -> str | None:
        budget = rec.request.cost_budget
        if budget is None:
            return None
        cheapest = min(self._ctx.predict(rec, i).cost_usd for i in serving)
        if cheapest <= budget:
            return None
        return (
            f"over cost budget on every eligible instance: cheapest estimate "
            f"${cheapest:.6f} > budget ${budget:.6f}"
        )

    def _make_room(self, rec: RequestRecord, now: float) -> str | None:
        """Enforce the queue bounds: shed the newest lowest-priority request, or refuse."""
        prio = rec.request.priority
        cap = self.limits.max_queued_per_priority.get(prio)
        if cap is not None and self._queue.count(prio) >= cap:
            return f"queue full for priority {prio.name.lower()} ({cap} queued)"
        if len(self._queue) < self.limits.max_queued:
            return None
        victim = self._queue.newest_below(prio)
        if victim is None:
            return f"queue full ({self.limits.max_queued} queued), none of lower priority"
        self._queue.remove(victim)
        self._acct.counters.shed += 1
        # the displacing request is not named: it may belong to another tenant
        prio_name = prio.name.lower()
        reason = f"shed: queue full, displaced by a request of higher priority ({prio_name})"
        self._finish(victim, _S.REJECTED, now, reason)
        return None

    def _reject_orphans(self, model: str, now: float) -> None:
        for rec in [r for r in self._queue if r.model_name == model]:
            self._queue.remove(rec)
            self._finish(rec, _S.REJECTED, now, f"no instance serves model {model!r} any more")

    # ------------------------------------------------------------------------- dispatch ----
    def next_dispatches(self, now: float, limit: int | None = None) -> list[Dispatch]:
        """Place queued requests on instances with room, in policy order (at most ``limit``).

        A request none of whose allowed instances has room is passed over and keeps its place:
        parked until one of the instances it waits for gains a slot (it costs nothing
        meanwhile), or — when the policy names no instances — skipped, and after
        ``limits.max_skips_per_dispatch`` such skips in one class the class counts as blocked for
        this call, which bounds the work per call.
        """
        self._tick(now)
        if self._rekey_pending:
            self._rekey_pending = False
            self._queue.rekey(self._policy.order_key, now)
        self._queue.release_due(now)
        out: list[Dispatch] = []
        parked: list[tuple[RequestRecord, tuple[int, float]]] = []
        skips: dict[ClassKey, int] = {}
        blocked: set[ClassKey] = set()

        def usable(cls: ClassKey) -> bool:
            return cls not in blocked and self._fleet.has_ready(cls)

        while limit is None or len(out) < limit:
            cls = self._queue.best_class(usable)
            if cls is None:
                break
            popped = self._queue.pop(cls)
            assert popped is not None
            rec, key = popped
            result = self._decide(rec, now)
            if isinstance(result, Dispatch):
                out.append(result)
            elif isinstance(result, Defer) and result.wait_for:
                self._queue.park(rec, key, result.wait_for)
            elif isinstance(result, Defer):
                parked.append((rec, key))
                skips[cls] = skips.get(cls, 0) + 1
                if skips[cls] > self.limits.max_skips_per_dispatch:
                    blocked.add(cls)
            elif isinstance(result, Demote) and not rec.demoted:
                rec.demoted = True
                rec.reason = result.reason
                self._queue.restore(rec, self._policy.order_key(rec))
            elif isinstance(result, Demote):  # demoted twice: the policy gives no place; skip
                parked.append((rec, key))
            else:
                self._finish(rec, result.status, now, result.reason)
        for rec, key in parked:
            self._queue.restore(rec, key)
        return out

    def _decide(self, rec: RequestRecord, now: float) -> Dispatch | Verdict:
        hint = rec.request.parallelism_hint
        room = self._fleet.ready(rec.model_name, hint, rec.excluded)

        def everywhere() -> Sequence[ExecutionInstance]:
            return self._fleet.usable(rec.model_name, hint, rec.excluded)

        if room and self._concurrency is not None:
            room = self._concurrency.admit(rec.request.tpot_slo_ms, room)
            if not room:
                return Defer("adaptive concurrency: instances at their limit for looser SLOs",
                             frozenset(i.instance_id for i in everywhere()) or None)  # fmt: skip
        if not room:
            wait_for = frozenset(i.instance_id for i in everywhere())
            return Defer("no allowed instance has room", wait_for or None)

        verdict = self._policy.place(rec, Candidates(room, everywhere), now)
        if not isinstance(verdict, Placement):
            return verdict
        tier = next((t for t in verdict.tiers if t), None)
        if tier is None:
            return Defer("no instance with room in any allowed tier")
        return self._route(rec, tier, verdict, now, everywhere)

    def _route(
        self,
        rec: RequestRecord,
        tier: Sequence[ExecutionInstance],
        verdict: Placement,
        now: float,
        everywhere: Callable[[], Sequence[ExecutionInstance]] | None = None,
    ) -> Dispatch | Defer:
        route = RouteRequest(
            rec.request,
            rec.prompt_tokens,
            rec.output_tokens,
            now,
            rec.prompt_text,
            rec.block_hashes,
        )
        choice = self._strategy.select(route, tier)
        chosen, inst = choice.instance_id, None
        for candidate in tier:
            if candidate.instance_id == chosen:
                inst = candidate
                break
        if inst is None:
            raise RuntimeError(
                f"routing strategy {self.strategy_name!r} chose {choice.instance_id!r}, "
                "which is not among its candidates"
            )
        if everywhere is not None and not rec.excluded:
            waited = self._worth_waiting(route, chosen, tier, everywhere())
            if waited is not None:
                return waited
        pred = verdict.predictions.get(inst.instance_id) or self._ctx.predict(rec, inst)
        decision = SchedulingDecision(
            request_id=rec.request_id,
            instance_id=inst.instance_id,
            policy=self._policy.label,
            strategy=self.strategy_name,
            reason=f"{verdict.reason}; {choice.reason}",
            scores=dict(choice.scores),
            predicted_ttft_ms=pred.ttft_ms,
            predicted_latency_ms=pred.latency_ms,
            estimated_cost=pred.cost_usd,
            decided_at=now,
        )
        self._assign(rec, inst, decision, pred, now)
        self._strategy.on_dispatch(route, inst.instance_id)
        return Dispatch(
            rec.request_id,
            inst.instance_id,
            decision,
            rec.request,
            rec.prompt_tokens,
            rec.output_tokens,
            rec.retries + 1,
        )

    def _worth_waiting(
        self,
        route: RouteRequest,
        chosen: str,
        tier: Sequence[ExecutionInstance],
        usable: Sequence[ExecutionInstance],
    ) -> Defer | None:
        """Ask the strategy whether a busy instance is worth waiting for (see
        :meth:`RoutingStrategy.wait_for`); a named, usable, busy instance parks the request."""
        if type(self._strategy).wait_for is RoutingStrategy.wait_for:
            return None  # the default never waits: skip building the busy list
        in_tier = {i.instance_id for i in tier}
        busy = [i for i in usable if i.instance_id not in in_tier]
        if not busy:
            return None
        target = self._strategy.wait_for(route, chosen, busy)
        if target is None or target not in {i.instance_id for i in busy}:
            return None
        return Defer(f"{self.strategy_name}: waiting for {target} (worth more than {chosen})",
                     frozenset((target,)))  # fmt: skip

    def _assign(
        self,
        rec: RequestRecord,
        inst: ExecutionInstance,
        decision: SchedulingDecision,
        pred: Prediction,
        now: float,
    ) -> None:
        rec.transition(_S.SCHEDULED, now, decision.reason)
        if rec.excluded:
            self._retrying.pop(rec.request_id, None)
        rec.instance_id, rec.decision, rec.prediction = inst.instance_id, decision, pred
        rec.scheduled_at, rec.started_at = now, None
        inst.active_requests += 1
        inst.total_requests += 1
        rec.cost_mark = self._meter.start(inst.instance_id, now)
        self._on_instance[inst.instance_id].add(rec.request_id)
        self._fleet.refresh(inst)

    def _release(self, rec: RequestRecord, now: float) -> None:
        """The request leaves its instance: free the slot and charge its cost."""
        iid = rec.instance_id
        assert iid is not None
        inst = self._fleet.lookup(iid)
        holders = self._on_instance.get(iid, set())
        holders.discard(rec.request_id)
        rec.cost_usd += self._meter.stop(iid, now, rec.cost_mark)
        if inst is None:
            return
        inst.active_requests = max(0, inst.active_requests - 1)
        if self._fleet.is_retired(iid):
            if not holders:
                self._forget_instance(iid)
            return
        was_ready = self._fleet.is_ready(iid)
        self._fleet.refresh(inst)  # a transition to ready wakes parked requests (on_ready)
        if was_ready:
            self._queue.wake(iid, 1)  # already ready: the freed slot still wakes one
        self._strategy.on_complete(rec.request_id, iid, now)

    # ------------------------------------------------------------------------- feedback ----
    def on_started(self, request_id: str, now: float) -> bool:
        """The engine accepted the request (SCHEDULED → RUNNING). Idempotent."""
        rec = self._feedback_target(request_id, now)
        if rec is None:
            return False
        if rec.status is _S.SCHEDULED:
            rec.transition(_S.RUNNING, now, "running")
            rec.started_at = now
        elif rec.status is not _S.RUNNING:
            raise IllegalTransition(f"request {request_id!r} is {rec.status.value}, not dispatched")
        return True

    def on_first_token(self, request_id: str, now: float) -> bool:
        """The first output token arrived (starts the request if ``on_started`` was skipped)."""
        if not self.on_started(request_id, now):
            return False
        rec = self._live[request_id]
        if rec.first_token_at is None:
            rec.first_token_at = now
            assert rec.scheduled_at is not None
            self._calibrate(rec, ttft_ms=(now - rec.scheduled_at) * 1e3)
        return True

    def on_complete(
        self,
        request_id: str,
        now: float,
        *,
        prompt_tokens: int,
        completion_tokens: int,
        finish_reason: str,
        cached_tokens: int = 0,
    ) -> bool:
        """The request finished normally (COMPLETED). Token counts are the engine's usage."""
        if not self.on_started(request_id, now):
            return False
        rec = self._live[request_id]
        rec.prompt_tokens, rec.completion_tokens = prompt_tokens, completion_tokens
        rec.cached_tokens, rec.finish_reason = cached_tokens, finish_reason
        self._release(rec, now)
        if rec.first_token_at is not None and completion_tokens > 1:
            tpot_ms = (now - rec.first_token_at) * 1e3 / (completion_tokens - 1)
            self._calibrate(rec, tpot_ms=tpot_ms)
            self._adapt_concurrency(rec, tpot_ms, now)
        self._note_latency(rec, now)
        self._finish(rec, _S.COMPLETED, now, f"finished: {finish_reason}")
        return True

    def on_failed(
        self,
        request_id: str,
        now: float,
        error: str,
        *,
        retryable: bool,
        retry_veto: str | None = None,
    ) -> bool:
        """The request failed on its instance. Returns True when it was requeued for a retry
        on another instance (only before its first token, within ``max_retries``, with
        exponential backoff and jitter); otherwise it is FAILED with ``error``.

        ``retry_veto`` is the driver's reason to refuse a retry the core would otherwise make
        (e.g. a fleet-wide retry budget); it ends up in the FAILED reason."""
        rec = self._feedback_target(request_id, now)
        if rec is None:
            return False
        if rec.status not in ON_INSTANCE_STATUSES:
            raise IllegalTransition(f"request {request_id!r} is {rec.status.value}, not dispatched")
        iid = rec.instance_id
        assert iid is not None
        inst = self._fleet.lookup(iid)
        if inst is not None:
            inst.failed_requests += 1
        self._release(rec, now)
        rec.error = error
        why_not = self._no_retry_reason(rec, retryable) or retry_veto
        if why_not is not None:
            self._finish(rec, _S.FAILED, now, f"failed on {iid}: {error} ({why_not})")
            return False
        self._requeue_retry(rec, iid, error, now)
        return True

    def _no_retry_reason(self, rec: RequestRecord, retryable: bool) -> str | None:
        if rec.first_token_at is not None:  # the client has text: a retry would contradict it
            return "failed after its first token"
        if not retryable:
            return "not retryable"
        if rec.retries >= self.limits.max_retries:
            return f"retries exhausted ({rec.retries})"
        assert rec.instance_id is not None
        if not self._retry_targets(rec, rec.excluded | {rec.instance_id}):
            return NO_RETRY_TARGET
        return None

    def _retry_targets(self, rec: RequestRecord, tried: set[str]) -> bool:
        """Is an instance in rotation (healthy, not draining) that this request has not failed
        on? Registered instances out of rotation do not count: a retry waiting for one of them
        could wait forever."""
        return bool(self._fleet.usable(rec.model_name, rec.request.parallelism_hint, tried))

    def _requeue_retry(self, rec: RequestRecord, iid: str, error: str, now: float) -> None:
        rec.excluded.add(iid)
        rec.retries += 1
        rec.not_before = now + self.retry_delay(rec.retries)
        rec.started_at = None
        reason = f"retry {rec.retries}/{self.limits.max_retries} after failure on {iid}: {error}"
        rec.transition(_S.QUEUED, now, reason)
        self._queue.push(rec, now)
        self._retrying[rec.request_id] = rec
        self._acct.on_retry()

    def _fail_stranded_retries(self, now: float) -> None:
        """An instance left rotation: a queued retry none of whose remaining instances (those it
        has not failed on) is in rotation any more ends FAILED now, with its last error — the
        same rule as at the failure itself, so a retry never outlives every possible target."""
        for rec in [r for r in self._retrying.values() if not self._retry_targets(r, r.excluded)]:
            self._queue.remove(rec)
            self._finish(
                rec,
                _S.FAILED,
                now,
                f"failed on {rec.instance_id}: {rec.error} ({NO_RETRY_TARGET}: the others left "
                "rotation before the retry could start)",
            )

    def retry_delay(self, retry: int) -> float:
        """Backoff before retry number ``retry`` (1, 2, ...): exponential from
        ``retry_backoff_s``, capped at ``retry_backoff_max_s``, then stretched by a random factor
        in ``[1, 1 + retry_jitter)`` so retries of requests that failed together spread out."""
        lim = self.limits
        base = min(lim.retry_backoff_s * 2 ** (retry - 1), lim.retry_backoff_max_s)
        return base * (1.0 + lim.retry_jitter * self._jitter_rng.random())

    def cancel(self, request_id: str, now: float, *, reason: str = "cancelled") -> CancelResult:
        """Cancel in any state: queued → CANCELLED; scheduled/running → CANCELLED and the
        instance to abort is returned; already ended → nothing changes."""
        return self._stop(request_id, now, _S.CANCELLED, reason)

    def on_timeout(self, request_id: str, now: float, *, reason: str = "timed out") -> CancelResult:
        """The runtime's timeout fired: TIMEOUT from any live state (like :meth:`cancel`)."""
        return self._stop(request_id, now, _S.TIMEOUT, reason)

    def expire(self, now: float) -> list[str]:
        """TIMEOUT every queued hard-deadline request whose deadline is ``<= now``."""
        self._tick(now)
        expired = self._queue.pop_expired(now)
        for rec in expired:
            self._finish(rec, _S.TIMEOUT, now, "hard deadline passed while queued")
        return [rec.request_id for rec in expired]

    def next_wakeup(self) -> float | None:
        """When a retry becomes dispatchable or a hard deadline expires (None: nothing due)."""
        return self._queue.next_wakeup()

    def _stop(
        self, request_id: str, now: float, status: RequestStatus, reason: str
    ) -> CancelResult:
        rec = self._live.get(request_id)
        if rec is None:
            return CancelResult(request_id, self.status(request_id), changed=False)
        self._tick(now)
        abort = None
        if rec.request_id in self._queue:
            self._queue.remove(rec)
        elif rec.status in ON_INSTANCE_STATUSES:
            abort = rec.instance_id
            self._release(rec, now)
        self._finish(rec, status, now, reason)
        return CancelResult(request_id, status, True, abort)

    def _feedback_target(self, request_id: str, now: float) -> RequestRecord | None:
        rec = self._live.get(request_id)
        if rec is None:
            self.status(request_id)  # KeyError if unknown
            return None
        self._tick(now)
        return rec

    def _calibrate(self, rec: RequestRecord, **observed: float) -> None:
        if rec.prediction is None or rec.instance_id is None:
            return
        if self._predictions is not None:  # re-stamps the instance: its predictions changed
            self._predictions.observe(rec.instance_id, rec.prediction, **observed)
            return
        observe = getattr(self.estimator, "observe", None)
        if observe is not None:
            observe(rec.instance_id, rec.prediction, **observed)

    def _adapt_concurrency(self, rec: RequestRecord, tpot_ms: float, now: float) -> None:
        slo = rec.request.tpot_slo_ms
        if self._concurrency is None or slo is None or rec.instance_id is None:
            return
        if self._fleet.is_retired(rec.instance_id):
            return
        inst = self._fleet.lookup(rec.instance_id)
        if inst is None:
            return
        # predictions do not depend on the limit: nothing to re-stamp; parked elastic requests
        # are woken by the completions that free slots
        self._concurrency.observe(
            inst.instance_id,
            tpot_ms,
            slo,
            active=inst.active_requests,
            ceiling=inst.max_concurrent_requests,
            dispatched_at=rec.scheduled_at if rec.scheduled_at is not None else now,
            now=now,
        )

    def concurrency_limit(self, instance_id: str) -> int:
        """Requests of elastic SLO the instance may run now (see core/concurrency.py): its
        ``max_concurrent_requests``, or the adaptive limit below it."""
        inst = self._fleet.get(instance_id)
        limit = self._concurrency.limit(instance_id) if self._concurrency is not None else None
        return inst.max_concurrent_requests if limit is None else limit

    def _note_latency(self, rec: RequestRecord, now: float) -> None:
        inst = self._fleet.lookup(rec.instance_id or "")
        if inst is None or rec.scheduled_at is None:
            return
        latency_ms = (now - rec.scheduled_at) * 1e3
        alpha = self.limits.latency_ewma_alpha
        first = inst.avg_latency_ms == 0.0
        inst.avg_latency_ms = (
            latency_ms if first else (1 - alpha) * inst.avg_latency_ms + alpha * latency_ms
        )
        self._fleet.touch(inst.instance_id)  # a live field changed: cached predictions may not hold

    def _finish(self, rec: RequestRecord, status: RequestStatus, now: float, reason: str) -> None:
        """Terminal bookkeeping, exactly once per request."""
        rec.transition(status, now, reason)
        del self._live[rec.request_id]
        if rec.excluded:
            self._retrying.pop(rec.request_id, None)
        self._history[rec.request_id] = rec
        while len(self._history) > self.limits.history_size:
            self._history.popitem(last=False)
        rec.prompt_text, rec.block_hashes = "", ()
        self._acct.on_terminal(rec)
        # Only policies that learn from outcomes need them (and the signals computed for them).
        if type(self._policy).observe is not _NO_OBSERVE and self._policy.observe(
            rec, self._signals(now)
        ):
            self._rekey_pending = True
        if self.on_terminal is not None:
            self.on_terminal(rec)

    def _signals(self, now: float) -> FleetSignals:
        return FleetSignals(now, len(self._queue), self._fleet.utilisation(), self._price_spread)

    def _tick(self, now: float) -> None:
        self._now = max(self._now, now)

    # -------------------------------------------------------------------------- queries ----
    def knows(self, request_id: str) -> bool:
        """Is the id live or still in the finished history?"""
        return request_id in self._live or request_id in self._history

    def is_live(self, request_id: str) -> bool:
        """Is the id submitted and not yet ended? (A resubmission would raise, as would one of
        a completed id still in the history.)"""
        return request_id in self._live

    def status(self, request_id: str) -> RequestStatus:
        return self.record(request_id).status

    def record(self, request_id: str) -> RequestRecord:
        """The request's record (live or from the bounded history). Treat it as read-only."""
        rec = self._live.get(request_id) or self._history.get(request_id)
        if rec is None:
            raise KeyError(f"unknown request {request_id!r} (never submitted, or evicted)")
        return rec

    def counters(self) -> Counters:
        """Cumulative counts; ``in_flight`` is the number of live records."""
        return replace(self._acct.counters, in_flight=len(self._live))

    def metrics(self, now: float) -> PerformanceMetrics:
        return self._acct.metrics(now, len(self._live))

    def summary(self, now: float) -> dict[str, object]:
        """Status for ``get_status()``: counts, policy (and why), queue depth by priority."""
        described = self._policy.describe()
        return {
            "running_requests": sum(len(s) for s in self._on_instance.values()),
            "pending_requests": len(self._queue),
            "available_instances": self._fleet.available_count(),
            "total_instances": len(self._fleet.instances()),
            "scheduling_policy": self.policy_name,
            "routing_strategy": self.strategy_name,
            "active_policy": described.get("active_policy", self.policy_name),
            "policy_reason": described.get("why", ""),
            "policy_details": described,
            "queue_depth_by_priority": self._queue.depth_by_priority(),
            "utilisation": self._fleet.utilisation(),
            "models": self._fleet.models(),
            "counters": self.counters().as_dict(),
            "now": max(self._now, now),
        }

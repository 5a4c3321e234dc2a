"""``ControlPlaneManager``: the asyncio runtime around the pure core (the seed guide's API).

The manager owns no decision logic. It feeds the :class:`ControlCore` with ``now`` (the event
loop's monotonic clock) and events, and carries out the core's decisions:

* ``submit_request`` counts the prompt, asks the core to admit it and asks the core for
  ``next_dispatches(now)`` right away (a request that finds room starts without waiting for the
  dispatch loop's turn);
* the dispatch loop asks the core for ``next_dispatches(now)`` whenever something changed (a
  finished request, a health or load change) and at a slow tick (aging, deadlines, retry
  backoff), and starts one task per dispatch (:mod:`~vllm_control_plane.runtime.execution`);
* failure detection takes instances out of rotation and back: active health checks (the fleet
  monitor) and passive detection (a circuit breaker per instance fed by request outcomes, with
  half-open probes); :class:`~vllm_control_plane.runtime.rotation.Rotation` keeps the reasons
  apart;
* retries before the first token go through the core (bounded, backoff with jitter, another
  instance) and a fleet-wide retry budget;
* hard deadlines: the core expires queued requests; a timer per attempt ends running ones
  (TIMEOUT, aborted on the engine).

Every request the core ends — whoever ends it, including shed and orphaned requests — finishes
its handle through ``core.on_terminal``, so no waiter is left behind. Cancelling a request
cancels its task; closing the backend stream aborts it on the engine. Reliability semantics and
the timeout table: docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections import OrderedDict
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from vllm_control_plane.backends.base import Backend, LoadSample
from vllm_control_plane.backends.openai_http import OpenAIHTTPBackend
from vllm_control_plane.core.core import ControlCore, CoreLimits, Dispatch
from vllm_control_plane.core.estimator import RooflineEstimator
from vllm_control_plane.core.lifecycle import RequestRecord
from vllm_control_plane.core.load_balancer import LoadBalancer
from vllm_control_plane.runtime.circuit import CircuitConfig
from vllm_control_plane.runtime.detection import FailureDetector
from vllm_control_plane.runtime.execution import Outcome, run_attempt
from vllm_control_plane.runtime.handles import RequestHandle, RequestResult
from vllm_control_plane.runtime.monitor import FleetMonitor, MonitorConfig
from vllm_control_plane.runtime.prompts import prepare_prompt
from vllm_control_plane.runtime.retry_budget import RetryBudget, RetryBudgetConfig
from vllm_control_plane.types import (
    ExecutionInstance,
    PerformanceMetrics,
    RequestMetadata,
    RequestStatus,
)

log = logging.getLogger(__name__)

TICK_S = 0.05  # dispatcher wake-up when nothing happens: aging, deadlines, backoff, probes


class RequestError(RuntimeError):
    """A streamed request ended without completing (failed, cancelled, rejected, timed out)."""

    def __init__(self, result: RequestResult) -> None:
        super().__init__(f"request {result.request_id} {result.status.value}: {result.error}")
        self.result = result


class _Router:
    """``cp.router``: read or switch the routing strategy live."""

    def __init__(self, core: ControlCore) -> None:
        self._core = core

    @property
    def routing_strategy(self) -> str:
        return self._core.strategy_name

    @routing_strategy.setter
    def routing_strategy(self, name: str) -> None:
        self._core.set_strategy(name)


class ControlPlaneManager:
    """Queue, schedule, route and execute requests on a fleet of engine servers."""

    def __init__(
        self,
        scheduling_policy: str = "adaptive",
        routing_strategy: str = "load_balanced",
        enable_monitoring: bool = True,
        *,
        backend: Backend | None = None,
        limits: CoreLimits | None = None,
        monitor_config: MonitorConfig | None = None,
        circuit_config: CircuitConfig | None = None,
        retry_budget: RetryBudgetConfig | None = None,
        drain_timeout_s: float = 30.0,
        result_history: int = 10_000,
        seed: int = 0,
    ) -> None:
        self.core = ControlCore(
            scheduling_policy,
            routing_strategy,
            estimator=RooflineEstimator(),
            seed=seed,
            limits=limits or CoreLimits(),
        )
        self.core.on_terminal = self._on_terminal
        self.router = _Router(self.core)
        self.load_balancer = LoadBalancer()
        self.backend: Backend = backend or OpenAIHTTPBackend()
        self.enable_monitoring = enable_monitoring
        self.drain_timeout_s = drain_timeout_s
        self.retry_budget = RetryBudget(retry_budget)
        self.detector = FailureDetector(
            self.core, self.backend, self._now, self._kick, circuit_config
        )
        self.breakers = self.detector.breakers  # per-instance circuit breakers
        self.rotation = self.detector.rotation  # why instances are out of rotation
        self._monitor = FleetMonitor(
            self.backend,
            self.get_instances,
            self.detector.on_health,
            self._on_load,
            monitor_config,
        )
        self._handles: OrderedDict[str, RequestHandle] = OrderedDict()
        self._history = result_history
        self._loops: list[asyncio.Task[None]] = []
        self._side_tasks: set[asyncio.Task[Any]] = set()
        self._wake: asyncio.Event | None = None
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------------ lifecycle
    @property
    def is_running(self) -> bool:
        return bool(self._loops)

    def _now(self) -> float:
        loop = self._loop or asyncio.get_running_loop()
        return loop.time()

    async def start(self) -> None:
        """Open backend sessions and start the dispatch (and monitoring) loops. Idempotent."""
        if self.is_running:
            return
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._stopping = False
        await self.backend.start()
        self._loops.append(asyncio.create_task(self._dispatch_loop(), name="vcp-dispatch"))
        if self.enable_monitoring:
            self._loops.append(asyncio.create_task(self._monitor.run(), name="vcp-monitor"))
        self._kick()

    async def stop(self, drain_timeout_s: float = 0.0) -> None:
        """Stop everything. Live requests (queued ones keep being dispatched) get
        ``drain_timeout_s`` to finish; the rest are cancelled (running ones aborted on their
        engines). Afterwards no task, connection or engine request of ours is left."""
        if drain_timeout_s > 0:
            live = [h.result for h in self._handles.values() if not h.result.done()]
            if live:
                await asyncio.wait(live, timeout=drain_timeout_s)
        self._stopping = True
        self._monitor.stop()
        self._kick()
        await _cancel_all(self._loops)
        self._loops.clear()
        await _cancel_all(list(self._side_tasks))
        now = self._now()
        for rid, handle in list(self._handles.items()):
            if self.core.is_live(rid):  # (finished records may have left the core's history)
                self.core.cancel(rid, now, reason="control plane stopped")
            if handle.task is not None and not handle.task.done():
                handle.task.cancel()
        await _cancel_all([h.task for h in self._handles.values() if h.task is not None])
        for rid in list(self._handles):
            self._finish(rid)
        await self.backend.close()

    # ------------------------------------------------------------------ instances
    def register_instance(self, instance: ExecutionInstance) -> None:
        """Add an engine server to the fleet (duplicate id → ValueError). It starts in
        rotation; the detectors take it out if it is not well."""
        self.core.add_instance(instance)
        self._forget_detectors(instance.instance_id)
        if not instance.is_healthy:  # e.g. re-registered after an ejection
            self.core.set_health(instance.instance_id, True, self._now_or_zero())
        self._kick()

    def unregister_instance(self, instance_id: str) -> None:
        """Drain an instance: no new dispatches; running requests get ``drain_timeout_s`` to
        finish, then are cancelled on the engine (or retried elsewhere if no token was sent)."""
        running = self.core.drain_instance(instance_id)
        self._forget_detectors(instance_id)
        if not running or self._loop is None or not self.is_running:
            self._abort_on_instance(running, "instance unregistered")
            self.core.remove_instance(instance_id)
            return
        self._spawn(self._drain(instance_id, running))

    def drain_instance(self, instance_id: str) -> list[str]:
        """Stop dispatching new requests to an instance but keep it registered (maintenance, a
        rolling restart). Requests running there finish normally; queued ones go to other
        instances or wait. Returns the ids still running there; :meth:`resume_instance` undoes
        it. Unknown id → KeyError. Unlike :meth:`unregister_instance`, nothing is ever aborted."""
        return list(self.core.drain_instance(instance_id))

    def resume_instance(self, instance_id: str) -> None:
        """Put a drained instance back into rotation (it still has to be healthy to get
        requests). Unknown id → KeyError."""
        self.core.resume_instance(instance_id)
        self._kick()  # queued requests may fit there now

    def _forget_detectors(self, instance_id: str) -> None:
        self._monitor.tracker.forget(instance_id)
        self.detector.forget(instance_id)

    async def _drain(self, instance_id: str, request_ids: list[str]) -> None:
        tasks = [t for rid in request_ids if (t := self._task_of(rid)) is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=self.drain_timeout_s)
        self._abort_on_instance(request_ids, f"instance {instance_id} drained")
        self.core.remove_instance(instance_id)
        self._kick()

    def _abort_on_instance(self, request_ids: list[str], reason: str) -> None:
        now = self._now() if self._loop else 0.0
        for rid in request_ids:
            if not self.core.is_live(rid):  # ended meanwhile (its record may even be evicted)
                continue
            self.core.on_failed(rid, now, reason, retryable=not self._has_tokens(rid))
            task = self._task_of(rid)
            if task is not None and not task.done():
                task.cancel()

    def get_instances(self) -> list[ExecutionInstance]:
        return self.core.instances()

    def get_instance_metrics(self, instance_id: str) -> dict[str, Any]:
        """Live figures of one instance (unknown id → KeyError)."""
        inst = self.core.instance(instance_id)
        return {
            "instance_id": inst.instance_id,
            "model_name": inst.model_name,
            "active_requests": inst.active_requests,
            "avg_latency_ms": inst.avg_latency_ms,
            "is_healthy": inst.is_healthy,
            "is_available": inst.is_available,
            "current_load": inst.current_load,
            "max_concurrent_requests": inst.max_concurrent_requests,
            "concurrency_limit": self.core.concurrency_limit(instance_id),
            "num_requests_running": inst.num_requests_running,
            "num_requests_waiting": inst.num_requests_waiting,
            "kv_cache_usage": inst.kv_cache_usage,
            "total_requests": inst.total_requests,
            "failed_requests": inst.failed_requests,
            "circuit": self.breakers.state(instance_id).value,
            "out_of_rotation": self.rotation.reasons(instance_id),
        }

    # ------------------------------------------------------------------ requests
    async def submit_request(
        self, request: RequestMetadata, *, hard_deadline: bool | None = None
    ) -> str:
        """Admit (or reject) a request and return its id at once; the result comes later.

        ``hard_deadline`` (default: ``limits.hard_deadlines``) makes ``slo_deadline_ms`` a hard
        bound: the request ends TIMEOUT when it passes, queued or running.

        A ``request_id`` of a live request, or of one that completed and is still remembered,
        raises :class:`~vllm_control_plane.core.core.DuplicateRequestId` (a ``ValueError``)
        and changes nothing; the id of a request that ended without completing may be
        submitted again (a retry; it replaces the old result)."""
        if self._stopping:
            raise RuntimeError("the control plane is stopping; no new requests")
        prepared = prepare_prompt(request)
        handle = RequestHandle(request.request_id)
        now = self._now()
        record = self.core.submit(  # a taken request_id raises DuplicateRequestId here
            request,
            now,
            prompt_tokens=prepared.prompt_tokens,
            prompt_text=prepared.text,
            block_hashes=prepared.block_hashes,
            hard_deadline=hard_deadline,
        )
        self.retry_budget.on_request(now)
        self._remember(handle)
        if record.status.is_terminal:
            self._finish(request.request_id)
        else:
            self._dispatch_now(now)
        return request.request_id

    async def get_request_status(self, request_id: str) -> RequestStatus:
        """Current status; answers for finished requests too (unknown id → KeyError)."""
        return self.core.status(request_id)

    async def cancel_request(self, request_id: str) -> bool:
        """Cancel a queued or running request (running: aborted on its engine).
        Returns False when it had already ended."""
        outcome = self.core.cancel(request_id, self._now())
        if not outcome.changed:
            return False
        task = self._task_of(request_id)
        if task is not None and not task.done():
            await _cancel_all([task])  # closing its stream aborts the engine request
        self._finish(request_id)
        self._kick()
        return True

    async def get_result(self, request_id: str, timeout: float | None = None) -> RequestResult:
        """Wait for the request to end and return its text, usage and timings."""
        handle = self._handles.get(request_id)
        if handle is None:
            return self._result(request_id, None)
        return await asyncio.wait_for(asyncio.shield(handle.result), timeout)

    async def stream(self, request: RequestMetadata | str) -> AsyncIterator[str]:
        """Yield generated text as it arrives. Submits ``request`` if it is new; raises
        :class:`RequestError` if the request ends in any state but COMPLETED (also after some
        text was yielded: a stream that breaks is never silently truncated)."""
        if isinstance(request, RequestMetadata):
            if request.request_id not in self._handles:
                await self.submit_request(request)
            request_id = request.request_id
        else:
            request_id = request
        handle = self._handles.get(request_id)
        if handle is None:
            raise KeyError(f"no live request {request_id!r}")
        async for chunk in handle.events():
            if chunk.text:
                yield chunk.text
        result = await handle.result
        if not result.ok:
            raise RequestError(result)

    def handle(self, request_id: str) -> RequestHandle:
        """The live handle (raw engine frames for pass-through; used by the gateway)."""
        return self._handles[request_id]

    # ------------------------------------------------------------------ monitoring
    def get_metrics(self) -> PerformanceMetrics:
        return self.core.metrics(self._now_or_zero())

    def get_status(self) -> dict[str, Any]:
        status = self.core.summary(self._now_or_zero())
        status["started"] = self.is_running
        status["retry_budget_refusals"] = self.retry_budget.refused
        status["out_of_rotation"] = {
            i.instance_id: self.rotation.reasons(i.instance_id)
            for i in self.core.instances()
            if not self.rotation.in_rotation(i.instance_id)
        }
        return status

    def update_policy(self, policy_name: str) -> None:
        """Switch the scheduling policy live (unknown name → ValueError listing valid ones)."""
        self.core.set_policy(policy_name)
        self._kick()

    # ------------------------------------------------------------------ dispatch
    def _now_or_zero(self) -> float:
        if self._loop is not None:
            return self._loop.time()
        try:
            return asyncio.get_running_loop().time()
        except RuntimeError:
            return 0.0

    def _kick(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def _dispatch_loop(self) -> None:
        while not self._stopping:
            await self._sleep_until_woken()
            if self._stopping:
                return
            try:
                self._dispatch_round(self._now())
            except Exception:  # a bug in one round must not stop all dispatching
                log.exception("dispatch round failed")
                await asyncio.sleep(TICK_S)

    async def _sleep_until_woken(self) -> None:
        # A timer setting the event rather than wait_for(): cancelling this wait can never be
        # swallowed by a timeout racing it (Python 3.11's wait_for can lose a cancel).
        assert self._wake is not None and self._loop is not None
        delay = TICK_S
        due = self.core.next_wakeup()
        if due is not None:
            delay = min(delay, max(due - self._loop.time(), 0.0))
        timer = self._loop.call_later(delay, self._wake.set)
        try:
            await self._wake.wait()
        finally:
            timer.cancel()
        self._wake.clear()

    def _dispatch_now(self, now: float) -> None:
        """Dispatch a new submission at once instead of waking the dispatch loop: its wake-up is
        one event-loop turn (a few hundred µs under load) on every request's first token. The
        core still picks in policy order among everything queued; only requests submitted in the
        same loop turn no longer compete for a single free slot as one batch."""
        if self._loop is None or not self._loops or self._stopping:
            self._kick()
            return
        try:
            self._start_dispatches(now)
        except Exception:  # same guard as the loop: the loop's next round tries again
            log.exception("dispatch at submission failed")
            self._kick()

    def _dispatch_round(self, now: float) -> None:
        self.core.expire(now)  # handles finish through on_terminal
        for probe in self.detector.due_probes(now):
            self._spawn(probe)
        self._start_dispatches(now)

    def _start_dispatches(self, now: float) -> None:
        for dispatch in self.core.next_dispatches(now):
            handle = self._handles.get(dispatch.request_id)
            if handle is None:  # evicted from history while queued: cannot happen, guard
                self.core.on_failed(dispatch.request_id, now, "lost handle", retryable=False)
                continue
            task = _start_task(self._execute(dispatch, handle), f"vcp-req-{dispatch.request_id}")
            handle.task = task if not task.done() else None

    async def _execute(self, dispatch: Dispatch, handle: RequestHandle) -> None:
        rid, iid = dispatch.request_id, dispatch.instance_id
        outcome: Outcome = None
        deadline: asyncio.TimerHandle | None = None
        try:
            if not self.detector.registered(iid):  # removed between decision and start
                self._fail_if_live(rid, f"instance {iid} was removed before the request started",
                                   retryable=True)  # fmt: skip
                return
            if not self.core.on_started(rid, self._now()):
                return  # cancelled between the decision and the start
            deadline = self._arm_deadline(rid)
            outcome = await run_attempt(
                self.core,
                self.backend,
                self.core.instance(iid),
                dispatch,
                handle,
                self._now,
                self.retry_budget,
            )
        except Exception as exc:  # a backend or bookkeeping bug: end the request, visibly
            log.exception("request %s: attempt on %s crashed", rid, iid)
            self._fail_if_live(rid, f"internal error: {type(exc).__name__}", retryable=False)
        finally:
            if deadline is not None:
                deadline.cancel()
            # A finished task kept in the history is ~6 more objects per request for every full
            # garbage collection to walk. (A retry may already have its own task: keep that.)
            if handle.task is asyncio.current_task():
                handle.task = None
            self.detector.on_attempt(iid, outcome)
            self._kick()

    def _fail_if_live(self, rid: str, error: str, *, retryable: bool) -> None:
        if self.core.is_live(rid) and self.core.status(rid) is not RequestStatus.QUEUED:
            self.core.on_failed(rid, self._now(), error, retryable=retryable)

    def _arm_deadline(self, rid: str) -> asyncio.TimerHandle | None:
        """A hard deadline also bounds a running request: TIMEOUT and abort when it passes."""
        rec = self.core.record(rid)
        at = rec.deadline_at
        if not rec.hard_deadline or at is None:
            return None
        assert self._loop is not None
        return self._loop.call_at(at, self._deadline_passed, rid)

    def _deadline_passed(self, rid: str) -> None:
        result = self.core.on_timeout(rid, self._now(), reason="hard deadline passed while running")
        task = self._task_of(rid)
        if result.changed and task is not None and not task.done():
            task.cancel()  # closing the stream aborts the engine request
        self._kick()

    # ------------------------------------------------------------------ load
    def _on_load(self, instance_id: str, sample: LoadSample) -> None:
        if not self.detector.registered(instance_id):
            return
        self.core.update_load(
            instance_id,
            running=int(sample.num_requests_running),
            waiting=int(sample.num_requests_waiting),
            kv_usage=sample.kv_cache_usage,
            now=self._now(),
        )
        self._kick()

    # ------------------------------------------------------------------ bookkeeping
    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coro, name="vcp-side")
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    def _task_of(self, request_id: str) -> asyncio.Task[None] | None:
        handle = self._handles.get(request_id)
        return handle.task if handle is not None else None

    def _has_tokens(self, request_id: str) -> bool:
        handle = self._handles.get(request_id)
        return handle is not None and any(c.has_output for c in handle.chunks)

    def _remember(self, handle: RequestHandle) -> None:
        self._handles.pop(handle.request_id, None)
        self._handles[handle.request_id] = handle
        while len(self._handles) > self._history:
            oldest, old = next(iter(self._handles.items()))
            if not old.result.done():
                break  # never forget a live request
            del self._handles[oldest]

    def _on_terminal(self, rec: RequestRecord) -> None:
        self._finish(rec.request_id)

    def _finish(self, request_id: str) -> None:
        handle = self._handles.get(request_id)
        if handle is not None and not handle.result.done():
            handle.finish(self._result(request_id, handle))

    def _result(self, request_id: str, handle: RequestHandle | None) -> RequestResult:
        text = handle.text if handle is not None else ""
        return RequestResult.from_record(self.core.record(request_id), text)


def _start_task(coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
    """A task for one attempt. From Python 3.12 it starts eagerly: it runs at once up to its
    first real wait (the engine's answer), so the request is on the wire without waiting for
    the event loop's next turn — a few hundred µs of every first token under load."""
    if sys.version_info >= (3, 12):
        loop = asyncio.get_running_loop()
        return asyncio.Task(coro, loop=loop, name=name, eager_start=True)  # type: ignore[call-arg]
    return asyncio.create_task(coro, name=name)


async def _cancel_all(tasks: list[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` and wait until every one has ended. Re-cancels while waiting: a task
    may swallow one cancellation (an inner timeout racing it) and must still end."""
    pending = {t for t in tasks if not t.done()}
    for task in pending:
        task.cancel()
    while pending:
        _, pending = await asyncio.wait(pending, timeout=0.2)
        for task in pending:
            task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)

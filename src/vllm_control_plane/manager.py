"""``ControlPlaneManager``: the asyncio runtime around the pure core (the seed guide's API).

The manager owns no decision logic. It feeds the :class:`ControlCore` with ``now`` (the event
loop's monotonic clock) and events, and carries out the core's decisions:

* ``submit_request`` counts the prompt, asks the core to admit it and wakes the dispatcher;
* the dispatch loop asks the core for ``next_dispatches(now)`` whenever something changed (a
  submission, a finished request, a health or load change) and at a slow tick (aging, deadlines),
  and starts one task per dispatch;
* an execution task streams the request from the backend and reports first token, completion or
  failure back to the core (which decides about retries);
* the fleet monitor (``enable_monitoring``) keeps health and scraped load current.

Cancelling a request cancels its task; closing the backend stream aborts it on the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any

from vllm_control_plane.backends.base import Backend, Failed, Finished, LoadSample, TokenChunk
from vllm_control_plane.backends.openai_http import OpenAIHTTPBackend
from vllm_control_plane.core.core import ControlCore, CoreLimits, Dispatch
from vllm_control_plane.core.estimator import RooflineEstimator
from vllm_control_plane.core.load_balancer import LoadBalancer
from vllm_control_plane.runtime.handles import RequestHandle, RequestResult
from vllm_control_plane.runtime.monitor import FleetMonitor, MonitorConfig
from vllm_control_plane.runtime.prompts import prepare_prompt
from vllm_control_plane.types import (
    ExecutionInstance,
    PerformanceMetrics,
    RequestMetadata,
    RequestStatus,
)

log = logging.getLogger(__name__)

TICK_S = 0.05  # dispatcher wake-up when nothing happens: aging and queue deadlines


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
        self.router = _Router(self.core)
        self.load_balancer = LoadBalancer()
        self.backend: Backend = backend or OpenAIHTTPBackend()
        self.enable_monitoring = enable_monitoring
        self.drain_timeout_s = drain_timeout_s
        self._monitor = FleetMonitor(
            self.backend,
            self.get_instances,
            self._on_health,
            self._on_load,
            monitor_config,
        )
        self._handles: OrderedDict[str, RequestHandle] = OrderedDict()
        self._history = result_history
        self._loops: list[asyncio.Task[None]] = []
        self._side_tasks: set[asyncio.Task[None]] = set()
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
        """Stop everything. In-flight requests get ``drain_timeout_s`` to finish, then are
        cancelled (aborted on their engines); queued ones are cancelled. No task is left."""
        if drain_timeout_s > 0:
            running = [h.task for h in self._handles.values() if h.task and not h.task.done()]
            if running:
                await asyncio.wait(running, timeout=drain_timeout_s)
        self._stopping = True
        self._monitor.stop()
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        self._loops.clear()
        now = self._now()
        for rid, handle in list(self._handles.items()):
            if not self.core.status(rid).is_terminal:
                self.core.cancel(rid, now, reason="control plane stopped")
            if handle.task is not None and not handle.task.done():
                handle.task.cancel()
        tasks = [h.task for h in self._handles.values() if h.task is not None]
        await asyncio.gather(*tasks, *self._side_tasks, return_exceptions=True)
        for rid in list(self._handles):
            self._finish(rid)
        await self.backend.close()

    # ------------------------------------------------------------------ instances
    def register_instance(self, instance: ExecutionInstance) -> None:
        """Add an engine server to the fleet (duplicate id → ValueError)."""
        self.core.add_instance(instance)
        self._kick()

    def unregister_instance(self, instance_id: str) -> None:
        """Drain an instance: no new dispatches; running requests get ``drain_timeout_s`` to
        finish, then are cancelled on the engine (or retried elsewhere if no token was sent)."""
        running = self.core.drain_instance(instance_id)
        self._monitor.tracker.forget(instance_id)
        if not running or self._loop is None or not self.is_running:
            self._abort_on_instance(running, "instance unregistered")
            self.core.remove_instance(instance_id)
            return
        task = asyncio.create_task(self._drain(instance_id, running))
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

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
            if self.core.status(rid).is_terminal:
                continue
            self.core.on_failed(rid, now, reason, retryable=not self._has_tokens(rid))
            task = self._task_of(rid)
            if task is not None and not task.done():
                task.cancel()
            self._finish_if_terminal(rid)

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
            "num_requests_running": inst.num_requests_running,
            "num_requests_waiting": inst.num_requests_waiting,
            "kv_cache_usage": inst.kv_cache_usage,
            "total_requests": inst.total_requests,
            "failed_requests": inst.failed_requests,
        }

    # ------------------------------------------------------------------ requests
    async def submit_request(self, request: RequestMetadata) -> str:
        """Admit (or reject) a request and return its id at once; the result comes later."""
        prepared = prepare_prompt(request)
        handle = RequestHandle(request.request_id)
        record = self.core.submit(  # a live duplicate request_id raises ValueError here
            request,
            self._now(),
            prompt_tokens=prepared.prompt_tokens,
            prompt_text=prepared.text,
            block_hashes=prepared.block_hashes,
        )
        self._remember(handle)
        if record.status.is_terminal:
            self._finish(request.request_id)
        else:
            self._kick()
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
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
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
        :class:`RequestError` if the request ends in any state but COMPLETED."""
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
        return status

    def update_policy(self, policy_name: str) -> None:
        """Switch the scheduling policy live (unknown name → ValueError listing valid ones)."""
        self.core.set_policy(policy_name)
        self._kick()

    # ------------------------------------------------------------------ internals
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
        assert self._wake is not None
        while not self._stopping:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), TICK_S)
            self._wake.clear()
            now = self._now()
            for rid in self.core.expire(now):
                self._finish(rid)
            for dispatch in self.core.next_dispatches(now):
                handle = self._handles.get(dispatch.request_id)
                if handle is None:  # evicted from history while queued: cannot happen, guard
                    self.core.on_failed(dispatch.request_id, now, "lost handle", retryable=False)
                    continue
                handle.task = asyncio.create_task(self._execute(dispatch, handle))

    async def _execute(self, dispatch: Dispatch, handle: RequestHandle) -> None:
        rid = dispatch.request_id
        instance = self.core.instance(dispatch.instance_id)
        request = self.core.record(rid).request
        if not self.core.on_started(rid, self._now()):
            return  # cancelled between the decision and the start
        events = self.backend.generate(instance, request)
        got_token = ended = False
        try:
            async for event in events:
                now = self._now()
                if isinstance(event, TokenChunk):
                    if not got_token:
                        got_token = True
                        self.core.on_first_token(rid, now)
                    handle.push(event)
                elif isinstance(event, Finished):
                    ended = True
                    self.core.on_complete(
                        rid,
                        now,
                        prompt_tokens=event.prompt_tokens,
                        completion_tokens=event.completion_tokens,
                        finish_reason=event.finish_reason,
                        cached_tokens=event.cached_tokens,
                    )
                elif isinstance(event, Failed):
                    ended = True
                    retry = self.core.on_failed(
                        rid, now, event.error, retryable=event.retryable and not got_token
                    )
                    if retry:
                        handle.discard_partial()
            if not ended:  # a backend that broke the protocol: end the request, visibly
                self.core.on_failed(rid, self._now(), "backend stream ended", retryable=False)
        finally:
            # On cancellation whoever cancelled already set the terminal state; closing the
            # stream here is what aborts the request on the engine.
            await events.aclose()  # type: ignore[attr-defined]
            self._finish_if_terminal(rid)
            self._kick()

    def _on_health(self, instance_id: str, healthy: bool) -> None:
        self.core.set_health(instance_id, healthy, self._now())
        self._kick()

    def _on_load(self, instance_id: str, sample: LoadSample) -> None:
        self.core.update_load(
            instance_id,
            running=sample.num_requests_running,
            waiting=sample.num_requests_waiting,
            kv_usage=sample.kv_cache_usage,
            now=self._now(),
        )
        self._kick()

    def _task_of(self, request_id: str) -> asyncio.Task[None] | None:
        handle = self._handles.get(request_id)
        return handle.task if handle is not None else None

    def _has_tokens(self, request_id: str) -> bool:
        handle = self._handles.get(request_id)
        return bool(handle and handle.chunks)

    def _remember(self, handle: RequestHandle) -> None:
        self._handles[handle.request_id] = handle
        while len(self._handles) > self._history:
            oldest, old = next(iter(self._handles.items()))
            if not old.result.done():
                break  # never forget a live request
            del self._handles[oldest]

    def _finish_if_terminal(self, request_id: str) -> None:
        if self.core.status(request_id).is_terminal:
            self._finish(request_id)

    def _finish(self, request_id: str) -> None:
        handle = self._handles.get(request_id)
        if handle is not None and not handle.result.done():
            handle.finish(self._result(request_id, handle))

    def _result(self, request_id: str, handle: RequestHandle | None) -> RequestResult:
        rec = self.core.record(request_id)
        queue_ms = None
        if rec.scheduled_at is not None:
            queue_ms = (rec.scheduled_at - rec.submitted_at) * 1000.0
        return RequestResult(
            request_id=request_id,
            status=rec.status,
            text=handle.text if handle is not None else "",
            instance_id=rec.instance_id,
            finish_reason=rec.finish_reason,
            prompt_tokens=rec.prompt_tokens,
            completion_tokens=rec.completion_tokens,
            cached_tokens=rec.cached_tokens,
            queue_time_ms=queue_ms,
            ttft_ms=rec.ttft_ms,
            tpot_ms=rec.tpot_ms,
            latency_ms=rec.e2e_ms,
            cost_usd=rec.cost_usd,
            retries=rec.retries,
            error=rec.reason if rec.status is not RequestStatus.COMPLETED else None,
            slo_met=rec.met_slo(),
        )

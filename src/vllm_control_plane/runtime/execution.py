"""One attempt of one request on one instance: stream the backend's events into the core.

The core decides, this loop reports: the first token (``on_first_token``), the chunks (onto the
request's handle, output-less role frames included), then exactly one of ``on_complete`` /
``on_failed``. A failure is retryable only while no token has reached the handle — after that
a retry would repeat or contradict text the client already has, so the request ends FAILED with
the error (never a silent truncation).
Before asking the core to retry, the attempt asks the fleet-wide retry budget; the budget's
refusal becomes part of the FAILED reason.

Cancelling the task running :func:`run_attempt` (client cancel, deadline, drain, shutdown) closes
the backend stream, which aborts the request on the engine; whoever cancelled has already put the
request in its terminal state.
"""

from __future__ import annotations

from collections.abc import Callable

from vllm_control_plane.backends.base import Backend, Failed, Finished, TokenChunk
from vllm_control_plane.core.core import ControlCore, Dispatch
from vllm_control_plane.runtime.handles import RequestHandle
from vllm_control_plane.runtime.retry_budget import RetryBudget
from vllm_control_plane.types import ExecutionInstance

Outcome = Finished | Failed | None  # None: cancelled, or the request had already ended


async def run_attempt(
    core: ControlCore,
    backend: Backend,
    instance: ExecutionInstance,
    dispatch: Dispatch,
    handle: RequestHandle,
    now: Callable[[], float],
    budget: RetryBudget,
) -> Outcome:
    """Run ``dispatch`` on ``instance``; return the backend's last event (None if cancelled)."""
    rid = dispatch.request_id
    events = backend.generate(instance, dispatch.request)
    got_token = False
    try:
        async for event in events:
            if not core.is_live(rid):  # ended elsewhere (cancel, deadline) and the cancel of
                return None  # this task got lost: stop reading, closing aborts the engine
            if isinstance(event, TokenChunk):
                if not got_token and event.has_output:  # (a role frame is not a token)
                    got_token = True
                    core.on_first_token(rid, now())
                handle.push(event)
            elif isinstance(event, Finished):
                _complete(core, rid, event, now())
                return event
            else:
                _failed(core, rid, event, got_token, handle, budget, now())
                return event
        protocol = Failed("backend stream ended without a result", retryable=False,
                          kind="protocol")  # fmt: skip
        _failed(core, rid, protocol, got_token, handle, budget, now())
        return protocol
    finally:
        await events.aclose()  # type: ignore[attr-defined]


def _complete(core: ControlCore, rid: str, event: Finished, now: float) -> None:
    core.on_complete(
        rid,
        now,
        prompt_tokens=event.prompt_tokens,
        completion_tokens=event.completion_tokens,
        finish_reason=event.finish_reason,
        cached_tokens=event.cached_tokens,
    )


def _failed(
    core: ControlCore,
    rid: str,
    event: Failed,
    got_token: bool,
    handle: RequestHandle,
    budget: RetryBudget,
    now: float,
) -> None:
    veto = budget.veto(now) if event.retryable and not got_token else None
    if core.on_failed(rid, now, event.error, retryable=event.retryable, retry_veto=veto):
        budget.on_retry(now)
        handle.discard_partial()
    elif veto is not None and (core.record(rid).reason or "").endswith(f"({veto})"):
        budget.refused += 1  # the budget, not another rule, stopped this retry

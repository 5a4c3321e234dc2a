"""A finished request as the client sees it: the error for a request that did not complete, and
the OpenAI JSON body for a non-streamed one that did.

The core ends every request in one terminal state with a reason; :func:`error_for` maps that
onto the HTTP contract (429 queue full, 503 no healthy instance, 504 deadline, the engine's own
4xx for its bad-parameter answers, 502 for engine failures). The body of a non-streamed
completion is rebuilt from the engine's streamed frames (the backend always streams), keeping the
engine's id, ``created`` and model name, and its exact usage object when the engine sent one.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from vllm_control_plane.backends.base import TokenChunk
from vllm_control_plane.gateway.errors import (
    GatewayError,
    deadline_passed,
    no_instance,
    queue_full,
)
from vllm_control_plane.gateway.passthrough import Captured
from vllm_control_plane.runtime.handles import RequestResult
from vllm_control_plane.types import RequestStatus

_NO_RETRY = {"X-Should-Retry": "false"}  # the OpenAI SDK honours it: do not resubmit


def error_for(result: RequestResult, captured: Captured, retry_after_s: int) -> GatewayError:
    """The client-facing error of a request that ended without completing."""
    reason = result.error or result.status.value
    status = result.status
    if status is RequestStatus.REJECTED:
        return _rejection(reason, retry_after_s)
    if status is RequestStatus.TIMEOUT:
        return deadline_passed(f"Request deadline passed: {reason}.")
    if status is RequestStatus.CANCELLED:
        return GatewayError(503, f"Request was cancelled: {reason}.", "request_cancelled",
                            headers=_NO_RETRY)  # fmt: skip
    failure = captured.failure
    if failure is not None and _client_error(failure.status):
        # the engine refused the request itself (bad parameters): pass its answer on
        return GatewayError(failure.status or 400, failure.error, "engine_rejected")
    return GatewayError(502, f"The engine failed the request: {reason}", "engine_error")


def _client_error(status: int | None) -> bool:
    return status is not None and 400 <= status < 500 and status != 429


def _rejection(reason: str, retry_after_s: int) -> GatewayError:
    low = reason.lower()
    if "queue full" in low:
        return queue_full(f"Queue full: {reason}.", retry_after_s)
    if "cost budget" in low:
        return GatewayError(400, reason, "cost_budget_exceeded", "X-Cost-Budget")
    if "uses parallelism" in low:
        return GatewayError(400, reason, "no_matching_layout", "X-Parallelism-Hint")
    if "slo impossible" in low or "deadline" in low:
        return GatewayError(504, reason, "deadline_infeasible", headers=_NO_RETRY)
    if "no instance serves model" in low:
        return GatewayError(404, reason, "model_not_found", "model")
    return no_instance(f"Request refused: {reason}.", retry_after_s)


def completion_body(
    chat: bool,
    chunks: list[TokenChunk],
    result: RequestResult,
    captured: Captured,
    model: str | None,
) -> bytes:
    """The non-streamed OpenAI response for a completed request."""
    head = _first_frame(chunks)
    prefix = "chatcmpl" if chat else "cmpl"
    text = "".join(c.text for c in chunks)
    choice: dict[str, Any] = {"index": 0}
    if chat:
        choice["message"] = {"role": "assistant", "content": text}
    else:
        choice["text"] = text
    choice.update(logprobs=None, finish_reason=result.finish_reason, stop_reason=None)
    body = {
        "id": head.get("id") or f"{prefix}-{result.request_id}",
        "object": "chat.completion" if chat else "text_completion",
        "created": head.get("created") or int(time.time()),
        "model": head.get("model") or model or "",
        "choices": [choice],
        "usage": _usage(result, captured),
    }
    return orjson.dumps(body)


def _first_frame(chunks: list[TokenChunk]) -> dict[str, Any]:
    for chunk in chunks:
        if chunk.raw.startswith(b"data: {"):
            try:
                obj = orjson.loads(chunk.raw[6:])
            except orjson.JSONDecodeError:
                return {}
            return obj if isinstance(obj, dict) else {}
    return {}


def _usage(result: RequestResult, captured: Captured) -> dict[str, Any]:
    frame = captured.usage_frame
    if frame.startswith(b"data: "):
        try:
            usage = orjson.loads(frame[6:]).get("usage")
            if isinstance(usage, dict):
                return usage
        except (orjson.JSONDecodeError, AttributeError):
            pass
    return result.usage

"""The client API: ``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``, health.

Flow of a generation request: check the API key, read the body (413 past the limit), validate the
fields the control plane needs (400; a completions prompt may also be token ids), resolve the
model (404) and check that a healthy instance serves it (503), then submit to the manager. The
response waits for the request's first event:

* streamed: the first frame from the engine (for chat its role frame, which vLLM sends with the
  first token) fixes the serving instance and the queue time, so they go out as response headers
  with the 200; then the engine's SSE frames are written unchanged as they arrive, then its usage
  frame (only if the client asked for ``include_usage``) and ``[DONE]``. A request that ends
  before its first frame (rejected, timed out, failed) still gets a proper HTTP error status; one
  that fails after it ends with vLLM's error frame and ``[DONE]``.
* not streamed: the OpenAI JSON body is rebuilt from the engine's frames once the result is in.

A client that disconnects (aiohttp cancels the handler, or the write fails) cancels its request,
which aborts it on the engine. Every finished request is counted in ``/metrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
from aiohttp import web

from vllm_control_plane.backends.base import TokenChunk
from vllm_control_plane.core.core import DuplicateRequestId
from vllm_control_plane.gateway.errors import (
    GatewayError,
    bad_request,
    duplicate_request_id,
    too_large,
)
from vllm_control_plane.gateway.outcomes import completion_body, error_for
from vllm_control_plane.gateway.parsing import ClientRequest, load_body, parse_request
from vllm_control_plane.gateway.passthrough import frame_head
from vllm_control_plane.gateway.service import Gateway
from vllm_control_plane.runtime.handles import RequestHandle, RequestResult
from vllm_control_plane.types import RequestStatus

GATEWAY_KEY: web.AppKey[Gateway] = web.AppKey("gateway", Gateway)
_DONE = b"data: [DONE]\n\n"
_SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
_JSON = "application/json"


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, chat=True)


async def completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, chat=False)


async def models(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY_KEY]
    gw.auth.tenant(request.headers)
    created = int(gw.started_at)
    data = [
        {"id": m, "object": "model", "created": created, "owned_by": "vcp", "root": m,
         "parent": None}
        for m in gw.model_names()
    ]  # fmt: skip
    return web.Response(body=orjson.dumps({"object": "list", "data": data}), content_type=_JSON)


async def health(request: web.Request) -> web.Response:
    """Liveness: the process serves HTTP."""
    return web.Response(body=b'{"status":"ok"}', content_type=_JSON)


async def ready(request: web.Request) -> web.Response:
    """Readiness: taking requests and at least one healthy instance in rotation."""
    gw = request.app[GATEWAY_KEY]
    healthy = [i for i in gw.cp.get_instances() if i.is_healthy and i.is_available]
    ok = gw.accepting and bool(healthy)
    body = {"ready": ok, "accepting": gw.accepting, "healthy_instances": len(healthy)}
    return web.Response(status=200 if ok else 503, body=orjson.dumps(body), content_type=_JSON)


# ---------------------------------------------------------------- generation


async def _read_body(request: web.Request, limit: int) -> bytes:
    length = request.content_length
    if length is not None and length > limit:
        raise too_large(limit)
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise too_large(limit) from None


async def _generate(request: web.Request, chat: bool) -> web.StreamResponse:
    gw = request.app[GATEWAY_KEY]
    try:
        raw = await _read_body(request, gw.config.server.max_body_bytes)
        creq = _admit(gw, request.headers, raw, chat)
    except GatewayError as e:
        gw.metrics.rejected(e.code or str(e.status))
        raise
    meta = creq.meta
    handle: RequestHandle | None = None
    gw.begin()
    try:
        try:
            await gw.cp.submit_request(meta, hard_deadline=creq.hard_deadline)
        except DuplicateRequestId as e:  # this caller's X-Request-Id is live or completed
            raise duplicate_request_id(creq.client_id, e.live) from None
        except ValueError as e:  # any other refusal of the request itself
            raise bad_request(str(e)) from None
        handle = gw.cp.handle(meta.request_id)
        if creq.stream:
            return await _stream(gw, request, creq, handle)
        return await _unary(gw, creq, handle)
    finally:
        gw.end()
        gw.auth.release(meta.tenant)  # pairs with acquire() at the end of _admit
        gw.backend.pop(meta.request_id)
        if handle is not None and handle.result.done():
            result = handle.result.result()
            gw.metrics.observe(result, meta.model_name or "", meta.priority.name.lower())
            # The response is out: its frames are dead weight in the manager's result history
            # (~18 objects per request for every full garbage collection to walk).
            handle.chunks.clear()


def _admit(gw: Gateway, headers: Any, raw: bytes, chat: bool) -> ClientRequest:
    """Everything that can refuse a request before it reaches the control plane."""
    if not gw.accepting:
        raise GatewayError(503, "The gateway is shutting down.", "shutting_down")
    tenant = gw.auth.tenant(headers)
    try:
        creq = parse_request(load_body(raw), headers, chat, tenant)
    except ValueError as e:  # RequestMetadata's own checks
        raise bad_request(str(e)) from None
    creq.meta.model_name = gw.resolve_model(creq.model)
    gw.check_serving(creq.meta.model_name)
    gw.auth.acquire(tenant)  # last: nothing may refuse after this counts the request in
    return creq


async def _unary(gw: Gateway, creq: ClientRequest, handle: RequestHandle) -> web.Response:
    rid = creq.meta.request_id
    try:
        result = await asyncio.shield(handle.result)
    except asyncio.CancelledError:  # the client went away: abort on the engine
        await _cancel(gw, rid)
        raise
    captured = gw.backend.pop(rid)
    headers = _result_headers(result, creq.client_id)
    if not result.ok:
        err = error_for(result, captured, gw.config.server.retry_after_s)
        _count_refusal(gw, result, err)
        return err.response(headers)
    body = completion_body(creq.chat, handle.chunks, result, captured, creq.model)
    return web.Response(body=body, content_type=_JSON, headers=headers)


async def _stream(
    gw: Gateway, request: web.Request, creq: ClientRequest, handle: RequestHandle
) -> web.StreamResponse:
    rid = creq.meta.request_id
    events = handle.events()
    response: web.StreamResponse | None = None
    try:
        first = await anext(events, None)
        if first is None:
            result = await handle.result
            if not result.ok:
                return _early_error(gw, creq, result)
        live = _live_headers(gw, rid, creq.client_id)
        response = _SSEResponse(headers={**_SSE_HEADERS, **live})
        await response.prepare(request)
        if first is not None:
            await _relay(response, first, events)
        result = await handle.result
        await response.write(_tail(gw, creq, result, first.raw if first else b""))
        await response.write_eof()
        return response
    except asyncio.CancelledError:
        await _cancel(gw, rid)
        raise
    except ConnectionResetError:  # the client hung up mid-stream: abort, nothing to answer
        await _cancel(gw, rid)  # (raising here would log a spurious server error)
        return response if response is not None else web.Response(status=499, reason="Gone")
    finally:
        await events.aclose()  # type: ignore[attr-defined]


class _SSEResponse(web.StreamResponse):
    """A stream whose headers leave with its first frame: one write and one client read fewer
    on the way to the first token (aiohttp versions that buffer headers honour the flag, older
    ones ignore it)."""

    _send_headers_immediately = False


async def _relay(
    response: web.StreamResponse, first: TokenChunk, events: AsyncIterator[TokenChunk]
) -> None:
    """Write the engine's frames as they come. A retried attempt (one that failed before its
    first token) sends its own role frame again: the client already has one, so it is skipped."""
    role_sent = _is_role(first)
    await response.write(first.raw)
    async for chunk in events:
        if not chunk.has_output and _is_role(chunk):
            if role_sent:
                continue
            role_sent = True
        await response.write(chunk.raw)


def _is_role(chunk: TokenChunk) -> bool:
    return not chunk.has_output and b'"role":' in chunk.raw


def _early_error(gw: Gateway, creq: ClientRequest, result: RequestResult) -> web.Response:
    """A streamed request that ended before its first token: a real HTTP error status."""
    err = error_for(result, gw.backend.pop(creq.meta.request_id), gw.config.server.retry_after_s)
    _count_refusal(gw, result, err)
    return err.response(_result_headers(result, creq.client_id))


def _tail(gw: Gateway, creq: ClientRequest, result: RequestResult, first_raw: bytes) -> bytes:
    """What follows the content frames: usage (if asked for) and [DONE], or an error frame."""
    captured = gw.backend.pop(creq.meta.request_id)
    if not result.ok:
        return error_for(result, captured, gw.config.server.retry_after_s).sse_frame()
    if not creq.include_usage:
        return _DONE
    usage = captured.usage_frame
    if not usage:  # the engine sent none although asked: build one from our accounting
        head = frame_head(first_raw) or b'data: {"id":"' + result.request_id.encode() + b'"'
        usage = head + b'[],"usage":' + orjson.dumps(result.usage) + b"}\n\n"
    return usage + _DONE


async def _cancel(gw: Gateway, request_id: str) -> None:
    """The client went away: cancel its request (which aborts it on the engine)."""
    with contextlib.suppress(KeyError, asyncio.CancelledError):
        await asyncio.shield(gw.cp.cancel_request(request_id))


def _count_refusal(gw: Gateway, result: RequestResult, err: GatewayError) -> None:
    if result.status in (RequestStatus.REJECTED, RequestStatus.TIMEOUT):
        gw.metrics.rejected(err.code or str(err.status))


def _live_headers(gw: Gateway, request_id: str, client_id: str) -> dict[str, str]:
    """Request id (as the client knows it), serving instance and queue time, read from the
    core's record."""
    headers = {"X-Request-Id": client_id}
    try:
        rec = gw.cp.core.record(request_id)
    except KeyError:
        return headers
    if rec.instance_id:
        headers["X-Instance-Id"] = rec.instance_id
    if rec.scheduled_at is not None:
        headers["X-Queue-Time-Ms"] = f"{(rec.scheduled_at - rec.submitted_at) * 1e3:.3f}"
    return headers


def _result_headers(result: RequestResult, client_id: str) -> dict[str, str]:
    headers = {"X-Request-Id": client_id}
    if result.instance_id:
        headers["X-Instance-Id"] = result.instance_id
    if result.queue_time_ms is not None:
        headers["X-Queue-Time-Ms"] = f"{result.queue_time_ms:.3f}"
    if result.retries:
        headers["X-Retries"] = str(result.retries)
    return headers

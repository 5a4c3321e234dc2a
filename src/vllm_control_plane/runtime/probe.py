"""The half-open probe: one tiny generation that tells whether an instance serves again.

A health check only says the HTTP server answers; the probe goes through the inference path a
client request takes (a one-token synthetic prompt, one output token), so an engine that answers
``/health`` but fails generations stays out of rotation. It is never a client's request.
"""

from __future__ import annotations

import asyncio
import itertools

from vllm_control_plane.backends._timeout import bounded
from vllm_control_plane.backends.base import Backend, Failed, Finished, TokenChunk
from vllm_control_plane.types import ExecutionInstance, RequestMetadata

PROBE_PREFIX = "vcp-probe-"
_seq = itertools.count(1)


def probe_request(instance: ExecutionInstance) -> RequestMetadata:
    """The smallest request an engine can serve (ids start with :data:`PROBE_PREFIX`)."""
    return RequestMetadata(
        request_id=f"{PROBE_PREFIX}{instance.instance_id}-{next(_seq)}",
        model_name=instance.model_name,
        prompt_tokens=1,
        max_tokens=1,
    )


async def probe_instance(backend: Backend, instance: ExecutionInstance, timeout: float) -> bool:
    """True when ``instance`` produced a token or finished within ``timeout`` seconds."""
    events = backend.generate(instance, probe_request(instance))
    try:
        async with bounded(timeout):
            return await _first_verdict(events)
    except asyncio.TimeoutError:
        return False
    finally:
        await events.aclose()  # type: ignore[attr-defined]


async def _first_verdict(events) -> bool:  # type: ignore[no-untyped-def]
    async for event in events:
        if isinstance(event, TokenChunk | Finished):
            return True
        if isinstance(event, Failed):
            return False
    return False

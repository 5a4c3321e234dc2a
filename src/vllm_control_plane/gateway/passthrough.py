"""What the gateway needs from the engine beyond the manager's results: usage frames, failures.

:class:`CapturingBackend` wraps the real backend and remembers, per request id, the engine's raw
usage frame (``Finished.raw_usage``, passed through byte for byte to clients that asked for
``include_usage``) and the last failure (its HTTP status lets an engine's own 400 reach the client
as a 400). The gateway :meth:`~CapturingBackend.pop`\\s both when its response is done, so the
tables only hold requests in flight.

:func:`frame_head` gives the head of an engine frame, for the rare usage frame the gateway must
build itself (an engine that sent none although asked). Role frames need nothing here: the
backend passes them up like any other frame.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from vllm_control_plane.backends.base import (
    ApiKind,
    Backend,
    BackendEvent,
    Failed,
    Finished,
    LoadSample,
)
from vllm_control_plane.runtime.probe import PROBE_PREFIX
from vllm_control_plane.types import ExecutionInstance, RequestMetadata


@dataclass(slots=True)
class Captured:
    usage_frame: bytes = b""
    failure: Failed | None = None


class CapturingBackend(Backend):
    """Delegates everything to ``inner``; records usage frames and failures by request id."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self._seen: dict[str, Captured] = {}

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()

    async def generate(
        self, instance: ExecutionInstance, request: RequestMetadata
    ) -> AsyncIterator[BackendEvent]:
        rid = request.request_id
        events = self.inner.generate(instance, request)
        if rid.startswith(PROBE_PREFIX):  # the manager's health probes: nobody pops them
            try:
                async for event in events:
                    yield event
            finally:
                await events.aclose()  # type: ignore[attr-defined]
            return
        try:
            async for event in events:
                if isinstance(event, Finished):
                    self._seen.setdefault(rid, Captured()).usage_frame = event.raw_usage
                elif isinstance(event, Failed):
                    self._seen.setdefault(rid, Captured()).failure = event
                yield event
        finally:
            await events.aclose()  # type: ignore[attr-defined]

    async def check_health(self, instance: ExecutionInstance) -> bool:
        return await self.inner.check_health(instance)

    async def scrape(self, instance: ExecutionInstance) -> LoadSample | None:
        return await self.inner.scrape(instance)

    def api_kind(self, request: RequestMetadata) -> ApiKind:
        return self.inner.api_kind(request)

    def pop(self, request_id: str) -> Captured:
        """What was seen for ``request_id`` (empty if nothing), forgetting it."""
        return self._seen.pop(request_id, None) or Captured()


def frame_head(raw: bytes) -> bytes | None:
    """``data: {"id":…,"model":…,"choices":`` of a vLLM chunk frame (None if not that shape)."""
    cut = raw.find(b',"choices":')
    return raw[: cut + len(b',"choices":')] if cut > 0 else None

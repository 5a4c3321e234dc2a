"""Per-request runtime state: the awaitable result and the live token stream.

A handle exists for every request the manager accepted. Events from the backend are appended
here; ``stream()`` readers each get their own queue, so a late reader still sees every chunk
(the text so far is replayed first). The handle is finished exactly once, with the core's
terminal record, which wakes ``get_result`` waiters and ends every stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from vllm_control_plane.backends.base import TokenChunk
from vllm_control_plane.core.lifecycle import RequestRecord
from vllm_control_plane.types import RequestStatus


@dataclass(frozen=True)
class RequestResult:
    """The outcome of one request, as ``await cp.get_result(id)`` returns it."""

    request_id: str
    status: RequestStatus
    text: str
    instance_id: str | None
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    queue_time_ms: float | None
    ttft_ms: float | None
    tpot_ms: float | None
    latency_ms: float | None
    cost_usd: float
    retries: int
    error: str | None = None  # why it did not complete (failed / rejected / timeout / cancelled)
    slo_met: bool | None = None  # None when the request carried no SLO

    @classmethod
    def from_record(cls, rec: RequestRecord, text: str) -> RequestResult:
        """The result of a finished request from the core's record and the text it produced."""
        return cls(
            request_id=rec.request_id,
            status=rec.status,
            text=text,
            instance_id=rec.instance_id,
            finish_reason=rec.finish_reason,
            prompt_tokens=rec.prompt_tokens,
            completion_tokens=rec.completion_tokens,
            cached_tokens=rec.cached_tokens,
            queue_time_ms=rec.queue_time_ms,
            ttft_ms=rec.ttft_ms,
            tpot_ms=rec.tpot_ms,
            latency_ms=rec.e2e_ms,
            cost_usd=rec.cost_usd,
            retries=rec.retries,
            error=rec.reason if rec.status is not RequestStatus.COMPLETED else None,
            slo_met=rec.met_slo(),
        )

    @property
    def ok(self) -> bool:
        return self.status is RequestStatus.COMPLETED

    @property
    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


_END = object()


@dataclass
class RequestHandle:
    """Live state of one accepted request inside the runtime."""

    request_id: str
    chunks: list[TokenChunk] = field(default_factory=list)
    result: asyncio.Future[RequestResult] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    task: asyncio.Task[None] | None = None  # the execution task while dispatched
    _readers: list[asyncio.Queue[object]] = field(default_factory=list)

    def push(self, chunk: TokenChunk) -> None:
        self.chunks.append(chunk)
        for q in self._readers:
            q.put_nowait(chunk)

    def discard_partial(self) -> None:
        """Forget chunks of an attempt that will be retried (none were streamed yet)."""
        self.chunks.clear()

    def finish(self, result: RequestResult) -> None:
        if not self.result.done():
            self.result.set_result(result)
        for q in self._readers:
            q.put_nowait(_END)

    @property
    def text(self) -> str:
        return "".join(c.text for c in self.chunks)

    async def events(self) -> AsyncIterator[TokenChunk]:
        """Every chunk of this request, from the first, until it ends."""
        queue: asyncio.Queue[object] = asyncio.Queue()
        for chunk in self.chunks:
            queue.put_nowait(chunk)
        if self.result.done():
            queue.put_nowait(_END)
        else:
            self._readers.append(queue)
        try:
            while True:
                item = await queue.get()
                if item is _END:
                    return
                assert isinstance(item, TokenChunk)
                yield item
        finally:
            if queue in self._readers:
                self._readers.remove(queue)

"""One HTTP/1.1 response of the engine client: its head, its body buffer and its watchdog.

How it works: the connection (:mod:`.http1`) feeds the response from ``data_received`` —
``_on_head`` once, ``_on_body`` per read, ``_end`` once — and wakes the single coroutine waiting
in ``read``/``sse_frames``/``request``. Body bytes are kept as the list of reads until the reader
takes them all at once; reading pauses past ``_HIGH_WATER`` unread bytes. The watchdog is one
timer per response: it notes the time of each read and, when it fires early, re-arms for the rest
of the gap, so a stream of many frames costs one ``loop.time()`` per read, not a timer.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Protocol

from vllm_control_plane.backends.http1_wire import (
    Head,
    HTTPClientError,
    ResponseTimeout,
    SSESplitter,
)

__all__ = ["Response", "ResponseClosed"]


class _Link(Protocol):
    """What a response needs of the connection carrying it."""

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def abort(self) -> None: ...


_HIGH_WATER = 1 << 20  # pause reading when this much body is buffered and not yet consumed


class ResponseClosed(HTTPClientError):
    """The reader closed the response before its end: ``read`` raises it, ``sse_frames`` just
    stops."""


class Response:
    """One response. ``status``/``reason`` are set once the head arrived (``request`` returns
    then); the body is read with :meth:`read` or :meth:`sse_frames`, once.

    Watchdog (``first_timeout``/``idle_timeout`` of :meth:`ConnectionPool.request`): the first
    phase runs from sending the request to the first body byte, then every gap between body reads
    is bounded by ``idle_timeout``. When it fires the connection is closed and the pending
    ``request``/``read``/``sse_frames`` raises :class:`ResponseTimeout`."""

    __slots__ = (
        "_chunks",
        "_conn",
        "_consumed",
        "_first",
        "_head",
        "_idle",
        "_last_read",
        "_loop",
        "_size",
        "_timer",
        "_waiter",
        "done",
        "error",
        "sent_at",
    )

    def __init__(
        self, loop: asyncio.AbstractEventLoop, first: float | None, idle: float | None
    ) -> None:
        self._loop = loop
        self._conn: _Link | None = None
        self._head: Head | None = None
        self._chunks: list[bytes] = []
        self._size = 0
        self._waiter: asyncio.Future[None] | None = None
        self._consumed = False
        self.done = False  # no more body will come (complete, failed or closed)
        self.error: HTTPClientError | None = None  # why the response ended abnormally
        self._first, self._idle = first, idle
        self._last_read: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.sent_at = loop.time()
        if first is not None:
            self._timer = loop.call_at(self.sent_at + first, self._watch)

    # ------------------------------------------------------------------ head

    @property
    def status(self) -> int:
        return self._require_head().status

    @property
    def reason(self) -> str:
        return self._require_head().reason

    @property
    def headers(self) -> dict[str, str]:
        """Response headers, names lower-cased (parsed on each access: keep the result)."""
        return self._require_head().headers()

    @property
    def keep_alive(self) -> bool:
        return self._require_head().keep_alive

    def _require_head(self) -> Head:
        if self._head is None:
            raise RuntimeError("the response head has not arrived")
        return self._head

    # ------------------------------------------------------------------ body

    async def read(self) -> bytes:
        """The whole body. Raises if the connection fails (or the response is closed) before
        the end of the body."""
        self._claim()
        parts: list[bytes] = []
        while True:
            if self._chunks:  # take them as they come, so flow control never stalls a big body
                parts += self._chunks
                self._chunks = []
                if self._size >= _HIGH_WATER:
                    self._resume()
                self._size = 0
            if self.done:
                break
            await self._wait()
        if self.error is not None:
            raise self.error
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def sse_frames(self) -> AsyncIterator[bytes]:
        """Each complete SSE event as bytes, without its terminating blank line (``b"data: ..."``
        for vLLM; see :class:`~.http1_wire.SSESplitter`). Ends quietly when the stream ends or
        the caller closes the response; raises when it breaks. Frames already received are
        yielded before an error is raised."""
        self._claim()
        split = SSESplitter().feed
        while True:  # the hot loop: one pass per read, not per frame
            chunks = self._chunks
            if chunks:
                self._chunks = []
                if self._size >= _HIGH_WATER:
                    self._resume()
                self._size = 0
                for frame in split(chunks[0] if len(chunks) == 1 else b"".join(chunks)):
                    yield frame
            elif self.done:
                if self.error is not None and not isinstance(self.error, ResponseClosed):
                    raise self.error
                return
            else:
                waiter = self._waiter = self._loop.create_future()
                await waiter

    def _claim(self) -> None:
        if self._consumed:
            raise RuntimeError("the response body is already being read")
        self._consumed = True

    def _resume(self) -> None:
        if self._conn is not None:
            self._conn.resume()

    async def _wait(self) -> None:
        waiter = self._waiter = self._loop.create_future()
        await waiter

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():  # a cancelled reader leaves a cancelled waiter behind
                waiter.set_result(None)

    # ------------------------------------------------------------------ fed by the connection

    def _on_head(self, head: Head) -> None:
        self._head = head
        self._wake()

    def _on_body(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        if self._idle is not None:
            if self._last_read is None:
                self._note_first_read()
            else:
                self._last_read = self._loop.time()
        elif self._timer is not None:
            self._note_first_read()
        if self._size >= _HIGH_WATER and self._conn is not None:
            self._conn.pause()
        waiter = self._waiter  # _wake(), inlined: this runs once per read
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _end(self, error: HTTPClientError | None) -> None:
        """No more body: complete (``error`` None) or broken. Idempotent."""
        if self.done:
            return
        self.done = True
        self.error = error
        self._conn = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._wake()

    # ------------------------------------------------------------------ watchdog

    def _note_first_read(self) -> None:
        """The first phase is over: from now on only the gaps between reads count."""
        self._last_read = now = self._loop.time()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._idle is not None:
            self._timer = self._loop.call_at(now + self._idle, self._watch)

    def _watch(self) -> None:
        self._timer = None
        if self.done:
            return
        if self._last_read is None:
            assert self._first is not None
            self._fail(ResponseTimeout("first", self._first))
        elif self._idle is not None:
            due = self._last_read + self._idle
            if self._loop.time() >= due:
                self._fail(ResponseTimeout("idle", self._idle))
            else:
                self._timer = self._loop.call_at(due, self._watch)

    def _fail(self, error: HTTPClientError) -> None:
        conn = self._conn
        self._end(error)
        if conn is not None:
            conn.abort()

    # ------------------------------------------------------------------ closing

    def close(self) -> None:
        """Stop reading. Before the end of the body this closes the connection (the server sees
        a disconnect); after it, nothing happens (the connection is already back in the pool)."""
        if not self.done:
            self._fail(ResponseClosed("the response was closed before its end"))
            self._chunks = []

    @property
    def closed_early(self) -> bool:
        """True when :meth:`close` cut the body short."""
        return isinstance(self.error, ResponseClosed)

    async def __aenter__(self) -> Response:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

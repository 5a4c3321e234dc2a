"""A scripted raw HTTP server for the engine-client tests: it answers whatever bytes a test
wants, as slowly, brokenly or strangely as wanted, and counts its connections."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

Handler = Callable[["RawConn", bytes, int], Awaitable[None]]


def sse_body(frames: list[bytes]) -> bytes:
    return b"".join(f + b"\n\n" for f in frames)


def chunked(payload: bytes, size: int) -> bytes:
    """``payload`` chunk-encoded in chunks of ``size`` bytes, with the last chunk."""
    parts = [payload[i : i + size] for i in range(0, len(payload), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
)


class RawConn(asyncio.Protocol):
    """One server-side connection: cuts requests (head + Content-Length body) and hands each to
    the server's handler, one at a time."""

    def __init__(self, server: RawServer) -> None:
        self.server = server
        self.buf = b""
        self.count = 0  # requests seen on this connection
        self.closed = asyncio.get_running_loop().create_future()
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.server.conns.append(self)
        self.task = asyncio.ensure_future(self._serve())

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while (end := self.buf.find(b"\r\n\r\n")) >= 0:
            head = self.buf[:end].lower()
            i = head.find(b"content-length:")
            n = int(head[i + 15 :].split(b"\r\n")[0]) if i >= 0 else 0
            if len(self.buf) < end + 4 + n:
                return
            self.queue.put_nowait(self.buf[: end + 4 + n])
            self.buf = self.buf[end + 4 + n :]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.task is not None:
            self.task.cancel()
        if not self.closed.done():
            self.closed.set_result(None)

    async def _serve(self) -> None:
        while True:
            request = await self.queue.get()
            self.server.requests.append(request)
            await self.server.handler(self, request, self.count)
            self.count += 1

    def write(self, data: bytes) -> None:
        self.transport.write(data)

    async def trickle(self, data: bytes) -> None:
        """Write one byte at a time, letting the event loop run between bytes."""
        for i in range(len(data)):
            self.transport.write(data[i : i + 1])
            await asyncio.sleep(0)

    def close(self) -> None:
        self.transport.close()


class RawServer:
    """``async with RawServer(handler) as srv``: listens on 127.0.0.1:``srv.port``."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.conns: list[RawConn] = []
        self.requests: list[bytes] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def open_connections(self) -> int:
        return sum(not c.closed.done() for c in self.conns)

    async def __aenter__(self) -> RawServer:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: RawConn(self), "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        for conn in self.conns:
            conn.transport.abort()
        await asyncio.gather(*(c.closed for c in self.conns))
        await asyncio.gather(*(c.task for c in self.conns if c.task), return_exceptions=True)
        await self._server.wait_closed()

"""A lean asyncio HTTP/1.1 client for engine servers: keep-alive pool, whole or SSE bodies.

How it works: :class:`ConnectionPool` keeps idle keep-alive connections per (host, port) and
writes each request in one ``transport.write``. A connection is an ``asyncio.Protocol``
(:class:`_Connection`); its ``data_received`` parses the head and decodes the body
(:mod:`.http1_wire`) straight into the :class:`Response`'s buffer and wakes the one coroutine
waiting on it. The response goes back to the pool the moment its last byte is parsed — only then,
and only when the server allows keep-alive; any error, timeout or early ``close()`` discards the
connection instead. Closing a response mid-stream closes its connection, which is how a request is
aborted on vLLM (it sees a client disconnect).

Timeouts cost one timer per response, not one per read: the watchdog notes the time of each read
and, when its timer fires early, re-arms for the rest of the gap (see :class:`Response`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Mapping

from vllm_control_plane.backends._timeout import bounded
from vllm_control_plane.backends.http1_wire import (
    MAX_HEAD,
    BodyDecoder,
    ConnectError,
    ConnectionLost,
    ConnectTimeout,
    Head,
    HTTPClientError,
    ProtocolError,
    ResponseTimeout,
    SSESplitter,
    encode_request,
    parse_head,
)

__all__ = [
    "ConnectError",
    "ConnectTimeout",
    "ConnectionLost",
    "ConnectionPool",
    "HTTPClientError",
    "ProtocolError",
    "Response",
    "ResponseClosed",
    "ResponseTimeout",
]

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
        self._conn: _Connection | None = None
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


class _Connection(asyncio.Protocol):
    """One TCP connection: parses the head, then decodes the body into the current response."""

    def __init__(self, pool: ConnectionPool, key: tuple[str, str, int]) -> None:
        self.pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.response: Response | None = None
        self.got_bytes = False  # the current response has received at least one byte
        self.idle_since = 0.0
        self.closed = False
        self._no_body = False
        self._head_buf = b""
        self._body: BodyDecoder | None = None
        self._paused = False
        self.lost: asyncio.Future[None] = pool.loop.create_future()

    # ------------------------------------------------------------------ protocol callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.pool.track(self)

    def data_received(self, data: bytes) -> None:
        resp = self.response
        if resp is None:  # nothing was asked: a confused server
            self.abort()
            return
        body = self._body
        if body is None:
            self.got_bytes = True
            self._head_data(resp, data)
            return
        try:
            payload = body.feed(data)
        except ProtocolError as exc:
            self._broken(resp, exc)
            return
        if payload:
            resp._on_body(payload)
        if body.done:
            self._complete(resp, body)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        resp, body = self.response, self._body
        self.response = self._body = None
        if resp is not None and not resp.done:
            if body is not None and exc is None and body.eof():
                resp._end(None)
            else:
                where = "before the response head" if body is None else "mid-response"
                reason = f": {exc}" if exc else ""
                resp._end(ConnectionLost(f"server closed the connection {where}{reason}"))
        if not self.lost.done():
            self.lost.set_result(None)

    # ------------------------------------------------------------------ parsing

    def _head_data(self, resp: Response, data: bytes) -> None:
        buf = self._head_buf + data if self._head_buf else data
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD:
                    self._broken(resp, ProtocolError("response head too large"))
                else:
                    self._head_buf = buf
                return
            try:
                head = parse_head(buf[:end], self._no_body)
            except ProtocolError as exc:
                self._broken(resp, exc)
                return
            buf = buf[end + 4 :]
            if head.status >= 200:
                break
            if head.status == 101:
                self._broken(resp, ProtocolError("unexpected 101 Switching Protocols"))
                return
        self._head_buf = b""
        body = self._body = BodyDecoder(head)
        resp._on_head(head)
        if buf or body.done:
            self._body_data(resp, body, buf)

    def _body_data(self, resp: Response, body: BodyDecoder, data: bytes) -> None:
        try:
            payload = body.feed(data) if data else b""
        except ProtocolError as exc:
            self._broken(resp, exc)
            return
        if payload:
            resp._on_body(payload)
        if body.done:
            self._complete(resp, body)

    def _complete(self, resp: Response, body: BodyDecoder) -> None:
        """The body is complete: hand the connection back (or drop it), then end the response."""
        head = resp._head
        self.response = self._body = None
        if body.extra or head is None or not head.keep_alive or self.closed:
            self.abort()
        else:
            self.resume()
            self.pool.release(self)
        resp._end(None)

    def _broken(self, resp: Response, exc: HTTPClientError) -> None:
        self.response = self._body = None
        self.abort()
        resp._end(exc)

    # ------------------------------------------------------------------ control

    def send(self, resp: Response, request: bytes, no_body: bool) -> None:
        self.response = resp
        self.got_bytes = False
        self._no_body = no_body
        resp._conn = self
        assert self.transport is not None
        self.transport.write(request)

    def pause(self) -> None:
        if not self._paused and self.transport is not None and not self.closed:
            self._paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self.transport is not None and not self.closed:
            self._paused = False
            self.transport.resume_reading()

    def abort(self) -> None:
        """Close at once (unsent data is dropped: the request is being abandoned)."""
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.abort()


class _Target:
    """A parsed URL: the pool key, the Host header value and the request target."""

    __slots__ = ("host", "host_header", "key", "path", "port", "tls")

    def __init__(self, url: str) -> None:
        scheme, sep, rest = url.partition("://")
        scheme = scheme.lower()
        if not sep or scheme not in ("http", "https"):
            raise ValueError(f"only http:// and https:// URLs are supported, got {url!r}")
        self.tls = scheme == "https"
        authority, slash, path = rest.partition("/")
        self.path = ("/" + path if slash else "/").encode("latin-1")
        if authority.startswith("["):  # IPv6 literal
            host, _, port = authority[1:].partition("]")
            port = port.removeprefix(":")
        else:
            host, _, port = authority.partition(":")
        if not host:
            raise ValueError(f"no host in {url!r}")
        self.host = host
        self.port = int(port) if port else 443 if self.tls else 80
        self.key = (scheme, host, self.port)
        self.host_header = authority.encode("ascii")


class ConnectionPool:
    """Keep-alive HTTP/1.1 connections to any number of (host, port) pairs.

    ``max_idle_per_host`` bounds the idle connections kept per server (the oldest is closed
    when a newer one comes back); there is no bound on connections in use. An idle connection
    older than ``keepalive_expiry`` seconds is not reused (servers close idle connections:
    uvicorn, and so vLLM, after 5 s). ``connect_timeout`` bounds each TCP connect (and TLS
    handshake: ``https://`` URLs use ``ssl_context``, by default the system's trust store)."""

    def __init__(
        self,
        *,
        max_idle_per_host: int = 64,
        connect_timeout: float | None = 5.0,
        keepalive_expiry: float = 4.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.max_idle_per_host = max_idle_per_host
        self.connect_timeout = connect_timeout
        self.keepalive_expiry = keepalive_expiry
        self.ssl_context = ssl_context
        self.connections_opened = 0  # TCP connections made so far
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._open: set[_Connection] = set()
        self._targets: dict[str, _Target] = {}
        self._closed = False

    @property
    def num_open(self) -> int:
        """Connections whose transport is not closed yet (idle or in use)."""
        return len(self._open)

    @property
    def num_idle(self) -> int:
        """Connections waiting in the pool for the next request."""
        return sum(len(v) for v in self._idle.values())

    @property
    def num_in_use(self) -> int:
        """Connections carrying a request or response right now."""
        return self.num_open - self.num_idle

    async def request(
        self,
        method: str,
        url: str,
        body: bytes = b"",
        headers: Mapping[str, str] | bytes | None = None,
        *,
        first_timeout: float | None = None,
        idle_timeout: float | None = None,
    ) -> Response:
        """Send a request and return once the response head has arrived.

        ``url`` is ``http://host[:port]/path``; ``headers`` a mapping or pre-encoded
        ``b"Name: value\\r\\n"`` lines (Host and Content-Length are added). The timeouts arm the
        response's watchdog (see :class:`Response`). Cancelling the call closes the connection.
        Raises :class:`ConnectError`, :class:`ConnectionLost`, :class:`ProtocolError` or
        :class:`ResponseTimeout`; a status >= 400 is not an error."""
        target = self._targets.get(url) or self._target(url)
        wire = encode_request(method, target.path, target.host_header, body, headers)
        no_body = method == "HEAD"
        conn = self._reuse(target.key)
        if conn is not None:
            resp = Response(self.loop, first_timeout, idle_timeout)
            conn.send(resp, wire, no_body)
            try:
                return await self._await_head(resp)
            except ConnectionLost:
                if conn.got_bytes:
                    raise
                # the server closed the idle connection as we reused it: once more, afresh
        conn = await self._connect(target)
        resp = Response(self.loop, first_timeout, idle_timeout)
        conn.send(resp, wire, no_body)
        return await self._await_head(resp)

    @staticmethod
    async def _await_head(resp: Response) -> Response:
        try:
            while resp._head is None:
                if resp.done:
                    assert resp.error is not None
                    raise resp.error
                await resp._wait()
        except BaseException:
            resp.close()
            raise
        return resp

    async def get(self, url: str, *, timeout: float | None = None) -> tuple[int, bytes]:
        """GET ``url`` and read the whole body within ``timeout`` seconds (health, metrics)."""
        resp = await self.request("GET", url, first_timeout=timeout, idle_timeout=timeout)
        async with resp:
            return resp.status, await resp.read()

    async def close(self) -> None:
        """Close every connection, idle or in use, and wait until each transport is gone."""
        self._closed = True
        self._idle.clear()
        conns = list(self._open)
        for conn in conns:
            resp = conn.response
            if resp is not None:
                resp._fail(ConnectionLost("the connection pool was closed"))
            conn.abort()
        if conns:
            await asyncio.gather(*(c.lost for c in conns))

    # ------------------------------------------------------------------ connections

    def _target(self, url: str) -> _Target:
        target = _Target(url)
        if len(self._targets) >= 4096:  # engine URLs are few; guard against unbounded growth
            self._targets.clear()
        self._targets[url] = target
        return target

    def _reuse(self, key: tuple[str, str, int]) -> _Connection | None:
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if conn.closed:  # aborted, its connection_lost not yet run
                continue
            if self.loop.time() - conn.idle_since < self.keepalive_expiry:
                return conn
            # the most recent idle connection expired, so all the older ones did too
            for stale in (conn, *idle):
                stale.abort()
            idle.clear()
        return None

    async def _connect(self, target: _Target) -> _Connection:
        if self._closed:
            raise ConnectError("the connection pool is closed")
        conn = _Connection(self, target.key)
        host, port = target.host, target.port
        if target.tls:
            if self.ssl_context is None:
                self.ssl_context = ssl.create_default_context()
            connecting = self.loop.create_connection(
                lambda: conn, host, port, ssl=self.ssl_context, server_hostname=host
            )
        else:
            connecting = self.loop.create_connection(lambda: conn, host, port)
        try:
            if self.connect_timeout is None:
                await connecting
            else:  # not wait_for: on 3.11 it can swallow a cancellation (see _timeout.py)
                async with bounded(self.connect_timeout):
                    await connecting
        except asyncio.TimeoutError:
            raise ConnectTimeout(
                f"connect to {target.host}:{target.port} timed out ({self.connect_timeout:g} s)"
            ) from None
        except OSError as exc:
            raise ConnectError(f"cannot connect to {target.host}:{target.port}: {exc}") from exc
        self.connections_opened += 1
        if self._closed:
            conn.abort()
            raise ConnectError("the connection pool is closed")
        return conn

    def track(self, conn: _Connection) -> None:
        self._open.add(conn)

    def release(self, conn: _Connection) -> None:
        """A connection finished a response cleanly: keep it for the next request."""
        if self._closed:
            conn.abort()
            return
        conn.idle_since = self.loop.time()
        idle = self._idle.setdefault(conn.key, [])
        if len(idle) >= self.max_idle_per_host:
            idle.pop(0).abort()
        idle.append(conn)

    def forget(self, conn: _Connection) -> None:
        """The connection closed (either side): drop it from every list."""
        self._open.discard(conn)
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            with contextlib.suppress(ValueError):
                idle.remove(conn)

"""A lean asyncio HTTP/1.1 client for engine servers: keep-alive pool, whole or SSE bodies.

How it works: :class:`ConnectionPool` keeps idle keep-alive connections per (host, port) and
writes each request in one ``transport.write``. A connection is an ``asyncio.Protocol``
(:class:`_Connection`); its ``data_received`` parses the head and decodes the body
(:mod:`.http1_wire`) straight into the :class:`Response`'s buffer and wakes the one coroutine
waiting on it. The response goes back to the pool the moment its last byte is parsed — only then,
and only when the server allows keep-alive; any error, timeout or early ``close()`` discards the
connection instead. Closing a response mid-stream closes its connection, which is how a request is
aborted on vLLM (it sees a client disconnect).

Timeouts cost one timer per response, not one per read (see :mod:`.http1_response`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Mapping

from vllm_control_plane.backends._timeout import bounded
from vllm_control_plane.backends.http1_response import Response, ResponseClosed
from vllm_control_plane.backends.http1_wire import (
    MAX_HEAD,
    BodyDecoder,
    ConnectError,
    ConnectionLost,
    ConnectTimeout,
    HTTPClientError,
    ProtocolError,
    ResponseTimeout,
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


log = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 2.0  # ConnectionPool.close(): longest wait for aborted transports to go


def _abandon(conn: _Connection) -> None:
    """End a connection whose connect did not complete (cancelled, timed out, refused).

    Why: uvloop, when ``create_connection`` is cancelled just as the TCP handshake completes,
    may already have called ``connection_made`` (so the pool tracks the connection) and then
    never calls ``connection_lost`` — not even after ``abort()`` — closing the socket on its own.
    Such a connection would sit in the pool for good, and ``close()``, which waits for every
    connection's loss, would wait forever (``vcp serve`` hung on shutdown). ``connection_lost``
    is idempotent, so an event loop that does report the loss later is harmless."""
    conn.abort()
    conn.connection_lost(None)


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
        if self.closed:  # the connect was abandoned (cancelled, timed out) before this ran
            transport.abort()
            return
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

    async def close(self, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """Close every connection, idle or in use, and wait until each transport is gone (at
        most ``timeout`` seconds: a connection whose loss is not reported by then is dropped)."""
        self._closed = True
        self._idle.clear()
        conns = list(self._open)
        for conn in conns:
            resp = conn.response
            if resp is not None:
                resp._fail(ConnectionLost("the connection pool was closed"))
            conn.abort()
        if not conns:
            return
        _, pending = await asyncio.wait([c.lost for c in conns], timeout=timeout)
        if pending:
            stuck = [c for c in conns if c.lost in pending]
            peers = ", ".join(f"{c.key[1]}:{c.key[2]}" for c in stuck)
            log.warning("connection pool: %d connection(s) not closed after %gs, dropped: %s",
                        len(stuck), timeout, peers)  # fmt: skip
            for conn in stuck:
                conn.connection_lost(None)

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
        except BaseException as exc:
            _abandon(conn)
            where = f"{target.host}:{target.port}"
            if isinstance(exc, asyncio.TimeoutError):
                limit = self.connect_timeout
                raise ConnectTimeout(f"connect to {where} timed out ({limit:g} s)") from None
            if isinstance(exc, OSError):
                raise ConnectError(f"cannot connect to {where}: {exc}") from exc
            raise  # cancelled: the request was abandoned while connecting
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

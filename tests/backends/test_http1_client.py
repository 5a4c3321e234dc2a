"""The engine HTTP/1.1 client over real sockets: an aiohttp server for ordinary answers (and as
the reference client), a scripted raw server for slow, broken and strange ones."""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from http1_testkit import SSE_HEAD, RawConn, RawServer, chunked, sse_body

from vllm_control_plane.backends.http1 import (
    ConnectError,
    ConnectionLost,
    ConnectionPool,
    ProtocolError,
    ResponseTimeout,
)

FRAMES = [b'data: {"n": %d, "text": "%s"}' % (i, b"x" * (i * 7)) for i in range(12)]
FRAMES.append(b"data: [DONE]")
BODY = sse_body(FRAMES)


async def _sse_writes(request: web.Request) -> web.StreamResponse:
    """Chunked SSE in awkward writes: several frames in one, frames cut in two."""
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for start in range(0, len(BODY), 37):
        await resp.write(BODY[start : start + 37])
    return resp


async def _sse_length(request: web.Request) -> web.Response:
    return web.Response(body=BODY, content_type="text/event-stream")


async def _json(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response({"echo": body.decode(), "id": request.headers.get("X-Request-Id")})


async def _peer(request: web.Request) -> web.Response:
    assert request.transport is not None
    return web.Response(text=str(request.transport.get_extra_info("peername")[1]))


async def _empty(request: web.Request) -> web.Response:
    return web.Response(status=204)


@pytest.fixture
async def app_url() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/sse/writes", _sse_writes)
    app.router.add_get("/sse/length", _sse_length)
    app.router.add_post("/json", _json)
    app.router.add_get("/peer", _peer)
    app.router.add_route("*", "/empty", _empty)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def pool() -> AsyncIterator[ConnectionPool]:
    p = ConnectionPool()
    try:
        yield p
    finally:
        await p.close()
        assert p.num_open == 0


# ------------------------------------------------------------------------------ ordinary answers


async def test_json_post(app_url: str, pool: ConnectionPool) -> None:
    resp = await pool.request("POST", app_url + "/json", b"hello", {"X-Request-Id": "r-1"})
    assert resp.status == 200 and resp.reason == "OK"
    assert resp.headers["content-type"].startswith("application/json")
    assert await resp.read() == b'{"echo": "hello", "id": "r-1"}'


@pytest.mark.parametrize("path", ["/sse/writes", "/sse/length"])
async def test_sse_frames_match_aiohttp_byte_for_byte(
    app_url: str, pool: ConnectionPool, path: str
) -> None:
    async with aiohttp.ClientSession() as session, session.get(app_url + path) as ref:
        lines = [line async for line in ref.content]
    expected = [line.rstrip(b"\n") for line in lines if line != b"\n"]
    resp = await pool.request("GET", app_url + path)
    assert resp.headers.get("transfer-encoding") == ("chunked" if "writes" in path else None)
    got = [frame async for frame in resp.sse_frames()]
    assert got == expected == FRAMES
    assert b"".join(f + b"\n\n" for f in got) == b"".join(lines)


async def test_chunked_body_read_whole(app_url: str, pool: ConnectionPool) -> None:
    resp = await pool.request("GET", app_url + "/sse/writes")
    assert await resp.read() == BODY


async def test_big_body_pauses_reading_until_consumed(pool: ConnectionPool, wait_until) -> None:
    big = bytes(range(256)) * (3 * 4096 + 7)  # ~3 MiB: more than the pause threshold

    async def handler(conn: RawConn, request: bytes, n: int) -> None:
        conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(big), big))

    async with RawServer(handler) as srv:
        resp = await pool.request("GET", srv.url + "/")
        conn = resp._conn
        assert conn is not None
        await wait_until(lambda: conn._paused, what="reading paused while nobody reads")
        assert await resp.read() == big
        assert pool.num_idle == 1  # and the connection went back to the pool


async def test_frames_trickled_byte_by_byte() -> None:
    async def handler(conn: RawConn, request: bytes, n: int) -> None:
        await conn.trickle(SSE_HEAD + chunked(BODY, 50))

    async with RawServer(handler) as srv:
        pool = ConnectionPool()
        resp = await pool.request("GET", srv.url + "/")
        assert [f async for f in resp.sse_frames()] == FRAMES
        await pool.close()


async def test_status_without_body_and_head_request(app_url: str, pool: ConnectionPool) -> None:
    resp = await pool.request("GET", app_url + "/empty")
    assert resp.status == 204 and await resp.read() == b""
    head = await pool.request("HEAD", app_url + "/sse/length")
    assert head.headers["content-length"] == str(len(BODY)) and await head.read() == b""
    assert pool.connections_opened == 1  # neither left unread bytes on the connection


async def test_body_until_close() -> None:
    async def handler(conn: RawConn, request: bytes, n: int) -> None:
        conn.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of ")
        await asyncio.sleep(0)
        conn.write(b"it")
        conn.close()

    async with RawServer(handler) as srv:
        pool = ConnectionPool()
        resp = await pool.request("GET", srv.url + "/")
        assert await resp.read() == b"all of it" and not resp.keep_alive
        await pool.close()


# ------------------------------------------------------------------------------ keep-alive


async def test_keep_alive_reuses_one_connection(app_url: str, pool: ConnectionPool) -> None:
    peers = set()
    for _ in range(5):
        resp = await pool.request("GET", app_url + "/peer")
        peers.add(await resp.read())
        sse = await pool.request("GET", app_url + "/sse/writes")
        assert len([f async for f in sse.sse_frames()]) == len(FRAMES)
    assert len(peers) == 1 and pool.connections_opened == 1 and pool.num_idle == 1


async def test_concurrent_requests_use_separate_connections(
    app_url: str, pool: ConnectionPool
) -> None:
    first = await asyncio.gather(*(pool.request("GET", app_url + "/peer") for _ in range(3)))
    peers = {await r.read() for r in first}
    again = await asyncio.gather(*(pool.request("GET", app_url + "/peer") for _ in range(3)))
    assert {await r.read() for r in again} == peers  # all three came back to the pool
    assert len(peers) == 3 and pool.connections_opened == 3


async def test_response_closed_early_is_not_reused() -> None:
    async def handler(conn: RawConn, request: bytes, n: int) -> None:
        if request.startswith(b"GET /stream"):
            conn.write(SSE_HEAD + chunked(sse_body(FRAMES[:1]), 1000)[:-5])  # and no more
        else:
            conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    async with RawServer(handler) as srv:
        pool = ConnectionPool()
        resp = await pool.request("GET", srv.url + "/stream")
        async for _ in resp.sse_frames():
            break
        resp.close()
        assert resp.closed_early
        resp = await pool.request("GET", srv.url + "/plain")
        await resp.read()
        resp.close()  # after the end of the body: nothing happens, the connection stays pooled
        assert not resp.closed_early
        await (await pool.request("GET", srv.url + "/plain")).read()
        assert pool.connections_opened == 2
        await asyncio.wait_for(srv.conns[0].closed, 5)
        assert srv.open_connections == 1
        await pool.close()


async def test_idle_connection_closed_by_server_is_retried_afresh() -> None:
    """The server drops a kept-alive connection just as it is reused: retried once, silently."""

    async def handler(conn: RawConn, request: bytes, n: int) -> None:
        if n == 0:
            conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        else:
            conn.close()  # the second request on a connection: hang up without a byte

    async with RawServer(handler) as srv:
        pool = ConnectionPool()
        for _ in range(3):
            assert await (await pool.request("POST", srv.url + "/", b"{}")).read() == b"ok"
        assert pool.connections_opened == 3 and len(srv.requests) == 5
        await pool.close()


async def test_expired_idle_connection_is_not_reused(app_url: str) -> None:
    pool = ConnectionPool(keepalive_expiry=0.0)
    for _ in range(2):
        await (await pool.request("GET", app_url + "/peer")).read()
    assert pool.connections_opened == 2
    await pool.close()


# ------------------------------------------------------------------------------ failures


async def test_connection_refused(pool: ConnectionPool) -> None:
    with socket.socket() as s:  # a port that was free a moment ago: nobody listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConnectError):
        await pool.request("GET", f"http://127.0.0.1:{port}/health")


async def test_server_closes_mid_stream() -> None:
    async def handler(conn: RawConn, request: bytes, n: int) -> None:
        wire = SSE_HEAD + chunked(BODY, 40)
        conn.write(wire[: len(wire) // 2])
        conn.close()

    async with RawServer(handler) as srv:
        pool = ConnectionPool()
        resp = await pool.request("GET", srv.url + "/")
        got = []
        with pytest.raises(ConnectionLost):
            async for frame in resp.sse_frames():
                got.append(frame)
        assert got and got == FRAMES[: len(got)]  # the frames that arrived whole came first
        await pool.close()


async def test_server_closes_before_answering() -> None:
    async def handler(conn: RawConn, request: bytes, n: int) -> None:
        conn.close()

    async with RawServer(handler) as srv:
        pool = ConnectionPool()
        with pytest.raises(ConnectionLost):
            await pool.request("POST", srv.url + "/", b"{}")
        await pool.close()


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 2OO OK\r\n\r\n",
        b"garbage\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nnot-hex\r\n",
    ],
)
async def test_malformed_response(answer: bytes) -> None:
    async def handler(conn: RawConn, request: bytes, n: int) -> None:
        conn.write(answer)

    async with RawServer(handler) as srv:
        pool = ConnectionPool()
        with pytest.raises(ProtocolError):
            resp = await pool.request("GET", srv.url + "/")
            await resp.read()
        await asyncio.wait_for(srv.conns[0].closed, 5)  # a broken connection is dropped
        await pool.close()


async def test_pool_close_leaves_nothing_open(app_url: str) -> None:
    hold = asyncio.Event()

    async def handler(conn: RawConn, request: bytes, n: int) -> None:
        conn.write(SSE_HEAD + b"%x\r\n%s\n\n\r\n" % (len(FRAMES[0]) + 2, FRAMES[0]))
        await hold.wait()

    async with RawServer(handler) as srv:
        pool = ConnectionPool()
        await (await pool.request("GET", app_url + "/peer")).read()  # one idle connection
        streaming = await pool.request("GET", srv.url + "/")  # one in use
        frames = streaming.sse_frames()
        assert await frames.__anext__() == FRAMES[0]
        assert pool.num_open == 2 and srv.open_connections == 1
        await pool.close()
        assert pool.num_open == 0 and pool.num_idle == 0
        await asyncio.wait_for(srv.conns[0].closed, 5)  # the server saw the disconnect
        with pytest.raises(ConnectionLost):
            await frames.__anext__()
        with pytest.raises(ConnectError):
            await pool.request("GET", app_url + "/peer")


async def test_cancelled_request_closes_its_connection() -> None:
    async def handler(conn: RawConn, request: bytes, n: int) -> None:
        await asyncio.Event().wait()  # never answers

    async with RawServer(handler) as srv:
        pool = ConnectionPool()
        task = asyncio.create_task(pool.request("POST", srv.url + "/", b"{}"))
        while not srv.requests:
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(srv.conns[0].closed, 5)
        assert pool.num_open == 0
        await pool.close()


# ------------------------------------------------------------------------------ watchdog


async def test_first_timeout_when_the_server_never_answers() -> None:
    async def handler(conn: RawConn, request: bytes, n: int) -> None:
        await asyncio.Event().wait()

    async with RawServer(handler) as srv:
        pool = ConnectionPool()
        with pytest.raises(ResponseTimeout) as err:
            await pool.request("POST", srv.url + "/", b"{}", first_timeout=0.05)
        assert err.value.phase == "first"
        await asyncio.wait_for(srv.conns[0].closed, 5)  # the engine sees a disconnect
        await pool.close()


async def test_first_timeout_covers_the_body_after_the_head() -> None:
    async def handler(conn: RawConn, request: bytes, n: int) -> None:
        conn.write(SSE_HEAD)  # headers at once, then no token ever
        await asyncio.Event().wait()

    async with RawServer(handler) as srv:
        pool = ConnectionPool()
        resp = await pool.request("GET", srv.url + "/", first_timeout=0.05, idle_timeout=10)
        with pytest.raises(ResponseTimeout) as err:
            async for _ in resp.sse_frames():
                pass
        assert err.value.phase == "first"
        await pool.close()


async def test_idle_timeout_after_some_frames() -> None:
    async def handler(conn: RawConn, request: bytes, n: int) -> None:
        conn.write(SSE_HEAD + chunked(sse_body(FRAMES[:2]), 1000)[:-5])  # no last chunk
        await asyncio.Event().wait()

    async with RawServer(handler) as srv:
        pool = ConnectionPool()
        resp = await pool.request("GET", srv.url + "/", first_timeout=10, idle_timeout=0.05)
        got = []
        with pytest.raises(ResponseTimeout) as err:
            async for frame in resp.sse_frames():
                got.append(frame)
        assert err.value.phase == "idle" and got == FRAMES[:2]
        await asyncio.wait_for(srv.conns[0].closed, 5)
        assert pool.num_open == 0
        await pool.close()


async def test_caller_closing_from_a_timer_ends_the_stream_quietly() -> None:
    async def handler(conn: RawConn, request: bytes, n: int) -> None:
        conn.write(SSE_HEAD + chunked(sse_body(FRAMES[:1]), 1000)[:-5])
        await asyncio.Event().wait()

    async with RawServer(handler) as srv:
        pool = ConnectionPool()
        resp = await pool.request("GET", srv.url + "/")
        got = []
        async for frame in resp.sse_frames():
            got.append(frame)
            asyncio.get_running_loop().call_soon(resp.close)
        assert got == FRAMES[:1] and resp.closed_early
        await asyncio.wait_for(srv.conns[0].closed, 5)
        await pool.close()


# ------------------------------------------------------------------------------ TLS


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A throw-away self-signed certificate for 127.0.0.1 (made with the openssl CLI)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not available")
    d = tmp_path_factory.mktemp("tls")
    cert, key = str(d / "cert.pem"), str(d / "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_https_stream_and_keep_alive(tls_files: tuple[str, str]) -> None:
    cert, key = tls_files
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    app = web.Application()
    app.router.add_get("/sse", _sse_writes)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        pool = ConnectionPool(ssl_context=ssl.create_default_context(cafile=cert))
        for _ in range(2):
            resp = await pool.request("GET", f"https://127.0.0.1:{port}/sse")
            assert [f async for f in resp.sse_frames()] == FRAMES
        assert pool.connections_opened == 1
        await pool.close()
        untrusting = ConnectionPool()  # the system trust store does not know this certificate
        with pytest.raises(ConnectError):
            await untrusting.request("GET", f"https://127.0.0.1:{port}/sse")
        await untrusting.close()
    finally:
        await runner.cleanup()

#!/usr/bin/env python3
"""CPU cost per request of the engine HTTP client: aiohttp's client vs the lean HTTP/1.1 client.

Two zero-delay engine stand-ins (``benchmarks/gateway_backend.py``) run in their own processes:
one answers streams at once (Content-Length body), one sends each SSE frame as its own HTTP chunk
``--itl-ms`` apart (chunked, as vLLM does). This process drives them with each client in turn —
the way the gateway's backend does: POST, then read the JSON body, or read the SSE body
(aiohttp: line by line, as ``openai_http.py`` does; http1: ``sse_frames()``). The figure is this
process's CPU time (user + system) divided by the requests completed; rounds alternate the
clients and the median is reported, so all see the same machine load. A third, "floor" client —
a bare protocol that only finds the end of each response — shows what any asyncio client pays
for sockets, wake-ups and syscalls; "above the floor" compares what the two clients add to it.

    python benchmarks/http_client_cost.py [--rounds 3] [--scale 1.0] [--parsers]

``--parsers`` adds an in-process comparison of the response parsing alone: the hand-written
parser (``backends/http1_wire.py``) against ``httptools`` (if installed) on the same bytes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import aiohttp
import orjson

from vllm_control_plane.backends.http1 import ConnectionPool
from vllm_control_plane.backends.http1_wire import BodyDecoder, SSESplitter, parse_head

HERE = Path(__file__).resolve().parent
HEADERS = {"Content-Type": "application/json", "X-Request-Id": "bench"}
Run = Callable[[], Awaitable[int]]  # one request; returns the frames (or bytes) it read


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def backend(tokens: int, itl_ms: float) -> Iterator[str]:
    """A zero-delay engine stand-in in its own process; yields its base URL."""
    port = _free_port()
    cmd = [sys.executable, str(HERE / "gateway_backend.py"), "--port", str(port)]
    proc = subprocess.Popen([*cmd, "--tokens", str(tokens), "--itl-ms", str(itl_ms)])
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("backend did not start") from None
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(5)


def _body(stream: bool) -> bytes:
    req = {"model": "bench-model", "messages": [{"role": "user", "content": "Hello there"}]}
    if stream:
        req.update(stream=True, stream_options={"include_usage": True})
    return orjson.dumps(req)


def aiohttp_run(session: aiohttp.ClientSession, url: str, stream: bool) -> Run:
    body = _body(stream)

    async def run() -> int:
        async with session.post(url, data=body, headers=HEADERS) as resp:
            if not stream:
                return (await resp.read()).count(b" tok")
            n = 0
            async for line in resp.content:  # as openai_http.py reads the engine's stream
                if line.startswith(b"data:"):
                    n += 1
            return n

    return run


def http1_run(pool: ConnectionPool, url: str, stream: bool) -> Run:
    body = _body(stream)

    async def run() -> int:
        resp = await pool.request("POST", url, body, HEADERS, first_timeout=60, idle_timeout=60)
        if not stream:
            return (await resp.read()).count(b" tok")
        n = 0
        async for frame in resp.sse_frames():
            if frame.startswith(b"data:"):
                n += 1
        return n

    return run


class _Bare(asyncio.Protocol):
    """The floor: a bare protocol that only finds where the response ends (no parsing, no
    frames). What any asyncio client pays for the socket, the wake-ups and the syscalls."""

    def __init__(self) -> None:
        self.done: asyncio.Future[None] | None = None
        self.head = b""
        self.left: int | None = None  # body bytes still due; -1 for a chunked body

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.left is None:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            lower = self.head[:end].lower()
            i = lower.find(b"content-length:")
            self.left = int(lower[i + 15 :].split(b"\r\n")[0]) if i >= 0 else -1
            data = self.head[end + 4 :]
            self.head = b""
        if self.left >= 0:
            self.left -= len(data)
            finished = self.left <= 0
        else:
            finished = data.endswith(b"0\r\n\r\n")
        if finished and self.done is not None:
            self.left = None
            self.done.set_result(None)


def bare_run(url: str, stream: bool) -> Run:
    host, port = url.split("//")[1].split("/")[0].split(":")
    body = _body(stream)
    wire = b"POST /v1/chat/completions HTTP/1.1\r\nHost: %s:%s\r\nContent-Length: %d\r\n\r\n%s" % (
        host.encode(), port.encode(), len(body), body
    )  # fmt: skip
    idle: list[_Bare] = []

    async def run() -> int:
        loop = asyncio.get_running_loop()
        if idle:
            conn = idle.pop()
        else:
            _, conn = await loop.create_connection(_Bare, host, int(port))
        conn.done = loop.create_future()
        conn.transport.write(wire)
        await conn.done
        idle.append(conn)
        return -1

    return run


async def measure(run: Run, requests: int, concurrency: int) -> tuple[float, int]:
    """(CPU µs per request, output of the last request)."""
    await asyncio.gather(*(run() for _ in range(concurrency)))  # open the connections
    left = requests
    out = 0

    async def worker() -> None:
        nonlocal left, out
        while left > 0:
            left -= 1
            out = await run()

    cpu = time.process_time()  # user + system of this process, all threads
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return (time.process_time() - cpu) / requests * 1e6, out


CASES = [  # (name, stream, chunked backend, requests at c=1, requests at c=64)
    ("JSON (non-streamed)", False, False, 2000, 6000),
    ("SSE, Content-Length body", True, False, 2000, 6000),
    ("SSE, chunked, frames apart", True, True, 150, 2000),
]


async def run_all(args: argparse.Namespace, urls: dict[bool, str]) -> list[list[str]]:
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    pool = ConnectionPool()
    rows = []
    try:
        for name, stream, chunked, n1, n64 in CASES:
            url = urls[chunked] + "/v1/chat/completions"
            for conc, n in ((1, n1), (64, n64)):
                n = max(int(n * args.scale), conc)
                ours, theirs, floors = [], [], []
                bare = bare_run(url, stream)
                for _ in range(args.rounds):
                    a, got_a = await measure(aiohttp_run(session, url, stream), n, conc)
                    b, got_b = await measure(http1_run(pool, url, stream), n, conc)
                    f, _ = await measure(bare, n, conc)
                    assert got_a == got_b, (got_a, got_b)  # both read the same answer
                    theirs.append(a)
                    ours.append(b)
                    floors.append(f)
                a, b, f = (statistics.median(x) for x in (theirs, ours, floors))
                above = f"{(a - f) / (b - f):.1f}×" if b > f else "–"
                rows.append(
                    [name, str(conc), f"{f:.0f}", f"{a:.0f}", f"{b:.0f}", f"{a / b:.1f}×", above]
                )
                print(" | ".join(rows[-1]), flush=True)
    finally:
        await session.close()
        await pool.close()
    return rows


# ------------------------------------------------------------------------------ parsers alone


def _wire(tokens: int, chunked: bool) -> tuple[bytes, list[bytes]]:
    """A vLLM-shaped SSE response and its frames (``\\n\\n``-terminated)."""
    frames = [b'data: {"id":"c","choices":[{"index":0,"delta":{"content":" tok%d"}}]}\n\n' % i
              for i in range(tokens)] + [b"data: [DONE]\n\n"]  # fmt: skip
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nx-request-id: r1\r\n"
    head += b"date: Sun, 29 Nov 2026 00:00:00 GMT\r\nserver: uvicorn\r\n"
    if chunked:
        head += b"transfer-encoding: chunked\r\n\r\n"
        return head, [b"%x\r\n%s\r\n" % (len(f), f) for f in frames] + [b"0\r\n\r\n"]
    body = b"".join(frames)
    return head + b"content-length: %d\r\n\r\n" % len(body), [body]


def parse_handwritten(head: bytes, reads: list[bytes]) -> int:
    end = head.find(b"\r\n\r\n")
    decoder = BodyDecoder(parse_head(head[:end]))
    splitter = SSESplitter()
    n = 0
    for data in reads:
        n += len(splitter.feed(decoder.feed(data)))
    assert decoder.done
    return n


def parse_httptools(head: bytes, reads: list[bytes]) -> int:
    import httptools  # only for this comparison

    class Sink:
        def __init__(self) -> None:
            self.body: list[bytes] = []
            self.done = False

        def on_body(self, data: bytes) -> None:
            self.body.append(data)

        def on_message_complete(self) -> None:
            self.done = True

    sink = Sink()
    parser = httptools.HttpResponseParser(sink)
    parser.feed_data(head)
    parser.get_status_code()
    splitter = SSESplitter()
    n = 0
    for data in reads:
        parser.feed_data(data)
        chunks, sink.body = sink.body, []
        n += len(splitter.feed(b"".join(chunks)))
    assert sink.done
    return n


def parser_rows(tokens: int) -> list[list[str]]:
    rows = []
    try:
        import httptools  # noqa: F401
    except ImportError:
        print("httptools is not installed: parser comparison skipped")
        return rows
    for label, chunked in (("chunked, one frame per read", True), ("Content-Length", False)):
        head, reads = _wire(tokens, chunked)
        costs = []
        for parse in (parse_handwritten, parse_httptools):
            assert parse(head, reads) == tokens + 1
            loops = 20000
            t = time.process_time()
            for _ in range(loops):
                parse(head, reads)
            costs.append((time.process_time() - t) / loops * 1e6)
        rows.append([label, f"{costs[0]:.1f}", f"{costs[1]:.1f}"])
        print(" | ".join(rows[-1]), flush=True)
    return rows


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the request counts")
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--itl-ms", type=float, default=1.0, help="frame gap, chunked backend")
    ap.add_argument("--parsers", action="store_true", help="also compare the parsers alone")
    ap.add_argument("--no-uvloop", action="store_true")
    args = ap.parse_args()
    if not args.no_uvloop:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    with backend(args.tokens, 0.0) as plain, backend(args.tokens, args.itl_ms) as chunked:
        rows = asyncio.run(run_all(args, {False: plain, True: chunked}))
    head = ["case", "concurrency", "floor µs/req", "aiohttp µs/req", "http1 µs/req",
            "aiohttp / http1", "above the floor"]  # fmt: skip
    print("\n" + _table(head, rows))
    if args.parsers:
        prow = parser_rows(args.tokens)
        if prow:
            print("\n" + _table(["response", "hand-written µs", "httptools µs"], prow))


if __name__ == "__main__":
    main()

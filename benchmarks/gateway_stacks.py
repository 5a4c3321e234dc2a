#!/usr/bin/env python3
"""Which Python HTTP server stack should the gateway use? CPU per request of a bare proxy.

Each stack serves the same handler: read the JSON body, parse it with orjson, and either answer
at once (``--no-forward``: the server's own cost) or forward it to a zero-delay backend with the
gateway's engine client (aiohttp, streamed SSE read line by line, as the backend does). ``wrk``
drives 64 connections; the server's CPU time (``/proc/<pid>/stat``) per request is reported.

Stacks: aiohttp low-level server, aiohttp ``web.Application``, uvicorn (httptools, uvloop) with a
raw ASGI app, granian (ASGI and RSGI). Missing ones are skipped
(``pip install uvicorn httptools granian``).

    python benchmarks/gateway_stacks.py [--duration 6]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gateway_overhead import _lua, cpu_ticks, free_port, start_backends, wait_port, wrk

BACKEND = os.environ.get("STACK_BACKEND", "")
FORWARD = os.environ.get("STACK_FORWARD", "1") == "1"
_session = None


async def forward(path: str, body: bytes) -> bytes:
    """The handler every stack runs."""
    req = orjson.loads(body)
    if not FORWARD:
        return b'{"ok":true}'
    global _session
    import aiohttp

    if _session is None:
        _session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    req.update(stream=True, stream_options={"include_usage": True})
    frames = 0
    headers = {"Content-Type": "application/json"}
    async with _session.post(BACKEND + path, data=orjson.dumps(req), headers=headers) as r:
        async for line in r.content:
            frames += line.startswith(b"data:")
    return b'{"frames":%d}' % frames


async def asgi(scope, receive, send):  # type: ignore[no-untyped-def]
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    body = b""
    while True:
        msg = await receive()
        body += msg.get("body", b"")
        if not msg.get("more_body"):
            break
    out = await forward(scope["path"], body)
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": out})


async def rsgi(scope, proto):  # type: ignore[no-untyped-def]
    out = await forward(scope.path, await proto())
    proto.response_bytes(200, [("content-type", "application/json")], out)


def _serve_aiohttp(port: int, app_router: bool) -> None:
    import uvloop
    from aiohttp import web

    async def handler(request: web.Request) -> web.Response:
        out = await forward(request.path, await request.read())
        return web.Response(body=out, content_type="application/json")

    async def main() -> None:
        if app_router:
            app = web.Application()
            app.router.add_post("/v1/chat/completions", handler)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
        else:
            server = web.Server(handler)
            await asyncio.get_running_loop().create_server(server, "127.0.0.1", port)
        await asyncio.Event().wait()

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(main())


STACKS = {
    "aiohttp (low-level Server)": lambda port: [sys.executable, __file__, "--serve", "aiohttp",
                                                str(port)],
    "aiohttp (web.Application)": lambda port: [sys.executable, __file__, "--serve", "aiohttp-app",
                                               str(port)],
    "uvicorn+httptools+uvloop, raw ASGI": lambda port: [
        sys.executable, "-m", "uvicorn", "gateway_stacks:asgi", "--port", str(port),
        "--loop", "uvloop", "--http", "httptools", "--log-level", "warning", "--no-access-log"],
    "granian ASGI": lambda port: ["granian", "--interface", "asgi", "--port", str(port),
                                  "--workers", "1", "--loop", "uvloop", "gateway_stacks:asgi"],
    "granian RSGI": lambda port: ["granian", "--interface", "rsgi", "--port", str(port),
                                  "--workers", "1", "--loop", "uvloop", "gateway_stacks:rsgi"],
}  # fmt: skip


def _available(name: str) -> bool:
    if name.startswith("uvicorn"):
        return all(importlib_ok(m) for m in ("uvicorn", "httptools", "uvloop"))
    if name.startswith("granian"):
        return shutil.which("granian") is not None
    return importlib_ok("uvloop")


def importlib_ok(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def measure(name: str, backend_url: str, forward_on: bool, lua: Path, seconds: float) -> float:
    port = free_port()
    env = {**os.environ, "STACK_BACKEND": backend_url, "STACK_FORWARD": "1" if forward_on else "0"}
    proc = subprocess.Popen(STACKS[name](port), env=env, cwd=Path(__file__).parent,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_port(port)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        wrk(url, lua, 64, 2)
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        pids = [proc.pid, *map(int, children)]
        before = cpu_ticks(pids)
        out = wrk(url, lua, 64, seconds)
        ticks = cpu_ticks(pids) - before
        n = int(out.split(" requests in")[0].split()[-1])
        return ticks / os.sysconf("SC_CLK_TCK") * 1e6 / n
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        _serve_aiohttp(int(sys.argv[3]), app_router=sys.argv[2] == "aiohttp-app")
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=6.0)
    args = ap.parse_args()
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        backends = start_backends(tmp, 0.0)
        try:
            lua = _lua(tmp)
            url = f"http://127.0.0.1:{backends[0].port}"
            print("| server stack | server only, CPU µs/request | proxy with aiohttp client |")
            print("|---|---|---|")
            for name in STACKS:
                if not _available(name):
                    print(f"| {name} | not installed | |")
                    continue
                own = measure(name, url, False, lua, args.duration)
                proxied = measure(name, url, True, lua, args.duration)
                print(f"| {name} | {own:.0f} | {proxied:.0f} |", flush=True)
        finally:
            for b in backends:
                b.stop()


if __name__ == "__main__":
    main()

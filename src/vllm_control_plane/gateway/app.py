"""The gateway's aiohttp application, its server and ``vcp serve``'s run loop.

Why aiohttp: measured side by side (docs/benchmarks.md, "Gateway overhead"), its server costs
about as much CPU per request as raw uvicorn+httptools ASGI or granian, far below the engine
client's cost, and it is already the project's HTTP client and simulator server: one stack, no
extra dependency, and native handler cancellation on client disconnect. uvloop is used when
installed.

One middleware turns every refusal (:class:`GatewayError`, aiohttp's own 404/405/413) into the
OpenAI error envelope; an unexpected exception is logged and answered with a 500 envelope, so no
input produces an HTML or plain-text error page. ``/metrics``, ``/openapi.json`` and
``/dashboard`` ask ``auth.py`` whether a credential is needed (``admin.protect_*``).

:class:`GatewayServer` runs a gateway on a socket it binds itself (port 0 works, ``.url`` is
known at once); :func:`serve` is the ``vcp serve`` loop: SIGINT/SIGTERM start a graceful
shutdown (stop accepting, let in-flight requests finish within ``server.shutdown_grace_s``, then
cancel them), bounded as a whole, and a second one exits at once (``shutdown.py``); SIGHUP
reloads the config file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import HttpVersion11, web

from vllm_control_plane.config import ConfigError, ControlPlaneConfig
from vllm_control_plane.gateway import admin, openai_routes, status
from vllm_control_plane.gateway.errors import GatewayError, from_http_exception
from vllm_control_plane.gateway.metrics import CONTENT_TYPE
from vllm_control_plane.gateway.openai_routes import GATEWAY_KEY
from vllm_control_plane.gateway.protocol import GatewayRunner
from vllm_control_plane.gateway.service import Gateway
from vllm_control_plane.gateway.shutdown import (
    SHUTDOWN_MARGIN_S,
    bounded_shutdown,
    hard_exit,
    on_stop_signals,
)

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_DASHBOARD = Path(__file__).parent / "dashboard" / "index.html"


@web.middleware
async def _error_envelope(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except GatewayError as e:
        return e.response(_echo_id(request))
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return from_http_exception(e).response(_echo_id(request))
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        err = GatewayError(500, "Internal error in the gateway (logged).", "internal_error")
        return err.response(_echo_id(request))


async def _expect_continue(request: web.Request) -> web.StreamResponse | None:
    """``Expect: 100-continue`` gets its interim answer; any other expectation a 417 in the
    error envelope. aiohttp runs this before the middlewares, and its default handler answers
    in plain text — or with a 500 when the header holds non-ASCII bytes."""
    expect = request.headers.get("Expect", "")
    if request.version == HttpVersion11 and expect.lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the interim answer is not part of the response
        return None
    err = GatewayError(417, "Only `Expect: 100-continue` is supported.", "expectation_failed",
                       err_type="ExpectationFailedError")  # fmt: skip
    return err.response(_echo_id(request))


def _echo_id(request: web.Request) -> dict[str, str]:
    rid = request.headers.get("X-Request-Id")
    return {"X-Request-Id": rid} if rid and rid.isprintable() and len(rid) <= 256 else {}


async def _metrics(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY_KEY]
    gw.auth.check_metrics(request.headers)  # open unless admin.protect_metrics
    return web.Response(body=gw.metrics.render(), headers={"Content-Type": CONTENT_TYPE})


async def _openapi(request: web.Request) -> web.Response:
    from vllm_control_plane.gateway.openapi import openapi_json

    request.app[GATEWAY_KEY].auth.check_page(request.headers)  # open unless admin.protect_pages
    return web.Response(body=openapi_json(), content_type="application/json")


async def _dashboard(request: web.Request) -> web.Response:
    request.app[GATEWAY_KEY].auth.check_page(request.headers)  # open unless admin.protect_pages
    try:
        page = _DASHBOARD.read_bytes()
    except OSError:  # an install without package data
        raise GatewayError(404, "The dashboard page is not installed.", "not_found") from None
    return web.Response(body=page, content_type="text/html")


def build_app(gw: Gateway) -> web.Application:
    """The aiohttp application serving ``gw``."""
    app = web.Application(
        middlewares=[_error_envelope], client_max_size=gw.config.server.max_body_bytes
    )
    app[GATEWAY_KEY] = gw
    r = app.router
    r.add_post("/v1/chat/completions", openai_routes.chat_completions)
    r.add_post("/v1/completions", openai_routes.completions)
    r.add_get("/v1/models", openai_routes.models)
    r.add_get("/health", openai_routes.health)
    r.add_get("/ready", openai_routes.ready)
    r.add_get("/metrics", _metrics)
    r.add_get("/openapi.json", _openapi)
    r.add_get("/dashboard", _dashboard)
    r.add_get("/status", status.public_status)  # the dashboard's data (auth.check_status)
    admin.add_routes(app)
    # Last: everything no route matched (404 / 405), so that those too get our Expect handling.
    r.add_route("*", "/{_unmatched:.*}", _unmatched)
    for route in r.routes():  # aiohttp takes the handler only when a route is added
        route._expect_handler = _expect_continue  # type: ignore[attr-defined]
    return app


async def _unmatched(request: web.Request) -> web.StreamResponse:
    """404, or 405 with ``Allow`` when the path exists under other methods."""
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        if resource is not request.match_info.route.resource:
            allowed |= (await resource.resolve(request))[1]
    if allowed:
        raise web.HTTPMethodNotAllowed(request.method, allowed)
    raise web.HTTPNotFound()


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.setblocking(False)
    return sock


class GatewayServer:
    """A running gateway on ``host:port`` (port 0: a free one). Async context manager."""

    def __init__(self, gateway: Gateway, host: str | None = None, port: int | None = None) -> None:
        self.gateway = gateway
        self.host = host or gateway.config.server.host
        self._port = gateway.config.server.port if port is None else port
        self._runner: web.AppRunner | None = None
        self._site: web.SockSite | None = None
        self._step = ""  # what close() is doing (see closing_step)

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self._port}"

    async def start(self) -> None:
        sock = _bind(self.host, self._port)
        self._port = sock.getsockname()[1]
        await self.gateway.start()
        self._runner = GatewayRunner(  # unparsable requests: envelope, nothing secret logged
            build_app(self.gateway), handler_cancellation=True, access_log=None,
            shutdown_timeout=5.0,
        )  # fmt: skip
        await self._runner.setup()
        self._site = web.SockSite(self._runner, sock, backlog=1024)
        await self._site.start()

    @property
    def closing_step(self) -> str:
        """What :meth:`close` is doing right now ("" before it starts)."""
        if self._step == "gateway":
            return self.gateway.stopping_step
        return self._step

    async def close(self, grace_s: float = 0.0) -> None:
        """Stop listening, let in-flight requests finish within ``grace_s``, cancel the rest."""
        self.gateway.accepting = False
        self._step = "closing the listening socket"
        if self._site is not None:
            await self._site.stop()
        self._step = "gateway"
        await self.gateway.stop(grace_s)
        self._step = "closing client connections (HTTP server)"
        if self._runner is not None:
            await self._runner.cleanup()
        self._runner = self._site = None
        self._step = "closed"

    async def __aenter__(self) -> GatewayServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def serve(
    config: ControlPlaneConfig,
    *,
    config_path: str | Path | None = None,
    host: str | None = None,
    port: int | None = None,
    announce: Callable[[str], None] = print,
    exit_now: Callable[[int], object] = hard_exit,
) -> int:
    """Run the gateway until SIGINT/SIGTERM (graceful shutdown); SIGHUP reloads the config.

    The whole shutdown is bounded by ``server.shutdown_grace_s`` + ``SHUTDOWN_MARGIN_S``; past
    it, or on a second SIGINT/SIGTERM, ``exit_now(status)`` ends the process (see
    ``shutdown.py``). Returns 0 after a clean shutdown."""
    gw = Gateway(config, config_path=config_path)
    server = GatewayServer(gw, host, port)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    on_stop_signals(loop, stop.set, announce, exit_now)
    with contextlib.suppress(NotImplementedError, AttributeError):
        loop.add_signal_handler(signal.SIGHUP, lambda: gw.spawn(_reload(gw, announce)))
    _announce_start(server, announce)
    await stop.wait()
    grace = gw.config.server.shutdown_grace_s
    bound = grace + SHUTDOWN_MARGIN_S
    announce(f"shutting down: finishing {gw.in_flight} in-flight request(s) (at most {grace:g}s; "
             f"all stopped within {bound:g}s)")  # fmt: skip
    if not await bounded_shutdown(server.close(grace), bound, lambda: server.closing_step,
                                  announce):  # fmt: skip
        exit_now(1)  # the rest cannot be trusted to end: no cleanup
        return 1
    announce("stopped")
    return 0


async def _reload(gw: Gateway, announce: Callable[[str], None]) -> None:
    try:
        report = await gw.reload()
    except (ConfigError, GatewayError) as e:
        announce(f"reload failed, keeping the running config: {e}")
        return
    announce(f"reloaded config: {report}")


def _announce_start(server: GatewayServer, announce: Callable[[str], None]) -> None:
    gw = server.gateway
    if gw.fleet and not gw.config.instances and gw.config_path is None:
        announce("No --config given: serving an embedded simulated fleet (vcp sim in-process).")
    for inst in gw.cp.get_instances():
        where = gw.fleet.describe(inst.instance_id) if inst.instance_id in gw.fleet else (
            f"{inst.instance_id}: {inst.base_url}  model={inst.model_name}"
        )  # fmt: skip
        announce(f"  instance {where}")
    announce(
        f"policy={gw.cp.core.policy_name} strategy={gw.cp.router.routing_strategy}  "
        f"models: {', '.join(gw.model_names())}"
    )
    admin = "on" if gw.auth.admin_enabled else "off (set admin.token or VCP_ADMIN_TOKEN)"
    announce(f"admin API: {admin}; API keys: {'required' if gw.auth.keys_required else 'off'}")
    guard = gw.config.admin
    metrics = "token required" if guard.protect_metrics else "open"
    pages = "token required" if guard.protect_pages else "open"
    data = "admin token required" if gw.auth.admin_enabled else "open"
    announce(f"/metrics: {metrics}; /dashboard, /openapi.json: {pages}; /status: {data}")
    announce(f"OpenAI API on {server.url}/v1  (dashboard: {server.url}/dashboard)")

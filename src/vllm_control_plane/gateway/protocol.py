"""aiohttp's connection protocol with the gateway's answers to requests it cannot parse.

When aiohttp's HTTP parser refuses a request (a control byte in a header value, a bare LF, a
header over 8 KiB, a bad request line), no handler or middleware runs: the connection protocol
answers by itself through ``RequestHandler.handle_error``, which

* logs ``Error handling request`` at ERROR with the parser's exception, whose message quotes the
  offending line — ``Authorization: Bearer <API key>\\x01`` puts the key in the logs, and
* answers with a plain-text 400 that echoes that line back.

:class:`GatewayRunner` is ``web.AppRunner`` with :class:`GatewayProtocol` as the connection
protocol; its ``handle_error`` logs one INFO line without the parser's message and answers in
the OpenAI error envelope (400, ``code: invalid_request_error``; the message keeps only the
parser's fixed reason, e.g. "Invalid header value char", never the bytes it quotes). The other
statuses aiohttp answers there (a 500 from outside the error middleware, a 504 for a handler's
``TimeoutError``) get the envelope too. The hooks used are the runner's ``_make_server`` (the
method ``AppRunner`` and ``ServerRunner`` implement) and the protocol's ``handle_error``; nothing
is copied out of aiohttp and no private attribute is read: the server and protocol aiohttp
builds are given a subclass without new state (``__class__`` swap, same slots).

:class:`RedactParserErrors`, a filter on the ``aiohttp.server`` logger, is the safety net for
every other aiohttp server in the process (the embedded simulators): a parser error logged there
keeps its level and peer address but loses the exception and its text. The gateway runs with the
access log off (``access_log=None``), so ``aiohttp.access`` logs nothing either.
"""

from __future__ import annotations

import logging
import re
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from vllm_control_plane.gateway.errors import GatewayError

log = logging.getLogger(__name__)

# The parser's messages start with a fixed reason ("Invalid header value char", "Got more than
# 8190 bytes when reading", "Bad status line") and then quote the data; keep letters, digits,
# spaces and a few punctuation marks from the start, which stops at the first ':' or quote.
_SAFE_REASON = re.compile(r"[A-Za-z][A-Za-z0-9 ,.()-]{0,79}")


def parser_error_reason(exc: BaseException | None) -> str:
    """The parser's fixed reason for ``exc``, without any of the request bytes it quotes."""
    if not isinstance(exc, HttpProcessingError):
        return "malformed request"
    match = _SAFE_REASON.match((exc.message or "").strip())
    reason = match.group(0).rstrip(" ,.(-") if match else ""
    return reason or type(exc).__name__


def _answer(status: int, exc: BaseException | None) -> GatewayError:
    if status < 500:
        return GatewayError(status, f"Malformed HTTP request: {parser_error_reason(exc)}. "
                            "The request line or a header is invalid (not echoed).",
                            "invalid_request_error")  # fmt: skip
    if status == HTTPStatus.GATEWAY_TIMEOUT:
        return GatewayError(504, "The request handler timed out.", "handler_timeout")
    return GatewayError(500, "Internal error in the gateway (logged).", "internal_error")


class GatewayProtocol(RequestHandler):
    """aiohttp's protocol; errors answered in the envelope and logged without header values."""

    __slots__ = ()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status < 500:  # the client's request could not be parsed: its bytes stay out of logs
            log.info("bad HTTP request from %s: %s (%s)", request.remote,
                     parser_error_reason(exc), type(exc).__name__ if exc else status)  # fmt: skip
        else:
            log.error("error handling a request from %s", request.remote, exc_info=exc)
        if request.writer.output_size > 0:  # as aiohttp: a response is already on its way
            raise ConnectionError("response already started; cannot send the error")
        resp = _answer(status, exc).response()
        resp.force_close()
        return resp


class _GatewayHTTPServer(web.Server):
    """``web.Server`` (the protocol factory) building :class:`GatewayProtocol` connections."""

    def __call__(self) -> RequestHandler:
        protocol = super().__call__()
        protocol.__class__ = GatewayProtocol
        return protocol


class GatewayRunner(web.AppRunner):
    """``web.AppRunner`` whose connections answer unparsable requests as the gateway does."""

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        install_log_redaction()

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()  # starts and freezes the app, as AppRunner does
        if type(server) is web.Server:
            server.__class__ = _GatewayHTTPServer
        return server


class RedactParserErrors(logging.Filter):
    """Drop the exception (and so the quoted request bytes) from aiohttp's parser-error logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            reason = parser_error_reason(exc)
            record.msg = f"{record.getMessage()} ({type(exc).__name__}: {reason}; bytes withheld)"
            record.args = ()
            record.exc_info = None
            record.exc_text = None
        return True


def install_log_redaction() -> None:
    """Put :class:`RedactParserErrors` on ``aiohttp.server`` (once per process)."""
    logger = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, RedactParserErrors) for f in logger.filters):
        logger.addFilter(RedactParserErrors())

"""Errors in the OpenAI envelope ``{"error": {"message", "type", "param", "code"}}``.

Every refusal the gateway makes is a :class:`GatewayError` raised where the problem is found and
turned into a response in one place (the app's error middleware), so a handler never builds an
error body by hand and no bad input can end as a bare 500. ``type`` follows the names vLLM and the
OpenAI SDK use; ``code`` is a short machine-readable string (``queue_full``, ``model_not_found``).
"""

from __future__ import annotations

import orjson
from aiohttp import web

_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
    405: "MethodNotAllowedError",
    409: "ConflictError",
    413: "RequestTooLargeError",
    415: "UnsupportedMediaTypeError",
    429: "RateLimitError",
    502: "BadGatewayError",
    503: "ServiceUnavailableError",
    504: "TimeoutError",
}


class GatewayError(Exception):
    """A refusal with its HTTP status, the client-facing message and optional headers."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        err_type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = headers or {}
        self.err_type = err_type or _TYPES.get(status, "InternalServerError")

    def envelope(self) -> dict[str, object]:
        return {
            "error": {
                "message": self.message,
                "type": self.err_type,
                "param": self.param,
                "code": self.code,
            }
        }

    def body(self) -> bytes:
        return orjson.dumps(self.envelope())

    def sse_frame(self) -> bytes:
        """The error as a stream frame plus ``[DONE]`` (vLLM's mid-stream error shape)."""
        return b"data: " + self.body() + b"\n\ndata: [DONE]\n\n"

    def response(self, extra_headers: dict[str, str] | None = None) -> web.Response:
        headers = {**self.headers, **(extra_headers or {})}
        return web.Response(
            status=self.status, body=self.body(), content_type="application/json", headers=headers
        )


def bad_request(
    message: str, param: str | None = None, code: str = "invalid_value"
) -> GatewayError:
    return GatewayError(400, message, code, param)


def unauthorized(message: str) -> GatewayError:
    return GatewayError(
        401, message, "invalid_api_key", headers={"WWW-Authenticate": 'Bearer realm="vcp"'}
    )


def model_not_found(model: str) -> GatewayError:
    return GatewayError(404, f"The model `{model}` does not exist.", "model_not_found", "model")


def too_large(limit: int) -> GatewayError:
    return GatewayError(413, f"Request body is larger than {limit} bytes.", "body_too_large")


def queue_full(reason: str, retry_after_s: int) -> GatewayError:
    return GatewayError(429, reason, "queue_full", headers={"Retry-After": str(retry_after_s)})


def rate_limited(message: str, code: str, retry_after_s: int) -> GatewayError:
    """A tenant over its request rate (``rate_limited``) or its concurrent requests
    (``concurrency_limited``)."""
    return GatewayError(429, message, code, headers={"Retry-After": str(retry_after_s)})


def duplicate_request_id(client_id: str, live: bool = True) -> GatewayError:
    """The caller already has a live request with this ``X-Request-Id`` (ids are per tenant), or
    one that completed and whose result is still kept (``live=False``)."""
    message = (
        f"A request with X-Request-Id {client_id!r} is still in flight."
        if live
        else f"A request with X-Request-Id {client_id!r} already completed; "
        "send a new X-Request-Id for a new request."
    )
    return GatewayError(409, message, "duplicate_request_id", "X-Request-Id",
                        headers={"X-Should-Retry": "false"})  # fmt: skip


def no_instance(message: str, retry_after_s: int) -> GatewayError:
    return GatewayError(
        503, message, "no_healthy_instance", headers={"Retry-After": str(retry_after_s)}
    )


def deadline_passed(message: str) -> GatewayError:
    return GatewayError(504, message, "deadline_exceeded")


def from_http_exception(exc: web.HTTPException) -> GatewayError:
    """aiohttp's own refusals (unknown route, wrong method, body too large) in our envelope."""
    codes = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}
    messages = {
        404: "No such route.",
        405: "Method not allowed on this route.",
        413: "Request body is too large.",
    }
    message = messages.get(exc.status) or exc.reason
    headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
    return GatewayError(exc.status, message, codes.get(exc.status), headers=headers)

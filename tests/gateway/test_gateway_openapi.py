"""``/openapi.json`` describes the API, and no generated input makes the gateway fail.

schemathesis generates requests from the served document (bodies, headers, path parameters,
with and without the admin token) and sends them to a gateway running over an embedded simulated
fleet in a background thread. Operations that would add instances at generated addresses are
left out (they could resolve arbitrary host names); the admin tests cover them.

"Fail" is :func:`gateway_answers_only`: a 500 (or any undocumented 5xx) is a bug, but some 5xx
are the gateway's correct answers to valid input — a hard deadline of 1e-255 ms ends in 504
``deadline_exceeded`` — so those pass, as long as they carry the documented code in the OpenAI
error envelope.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from tests.gateway.conftest import ADMIN, CHAT, gateway_config, sim

from vllm_control_plane.config import parse_config
from vllm_control_plane.gateway import Gateway, GatewayServer
from vllm_control_plane.gateway.openapi import openapi_document

schema = schemathesis.openapi.from_dict(openapi_document())

# The 5xx answers docs/gateway.md documents, by status: code (gateway/errors.py, outcomes.py).
DOCUMENTED_5XX: dict[int, frozenset[str]] = {
    502: frozenset({"engine_error"}),
    503: frozenset({"no_healthy_instance", "request_cancelled", "shutting_down"}),
    504: frozenset({"deadline_exceeded", "deadline_infeasible"}),
}
_TYPES = {502: "BadGatewayError", 503: "ServiceUnavailableError", 504: "TimeoutError"}


def undocumented_5xx(method: str, path: str, status: int, body: bytes) -> str | None:
    """Why a response is a server error (None: it is not one, or it is a documented answer)."""
    if status < 500:
        return None
    if (method.upper(), path, status) == ("GET", "/ready", 503):  # not ready: its own body
        ready = _json(body)
        return None if ready.get("ready") is False else f"/ready 503 with body {body[:200]!r}"
    codes = DOCUMENTED_5XX.get(status)
    if codes is None:
        return f"HTTP {status} is never a documented answer: {body[:300]!r}"
    error = _json(body).get("error")
    if not isinstance(error, dict) or not isinstance(error.get("message"), str):
        return f"HTTP {status} without the OpenAI error envelope: {body[:300]!r}"
    if error.get("code") not in codes or error.get("type") != _TYPES[status]:
        return (f"HTTP {status} with code {error.get('code')!r} / type {error.get('type')!r}; "
                f"documented: {sorted(codes)} / {_TYPES[status]}")  # fmt: skip
    return None


def _json(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


@schemathesis.check
def gateway_answers_only(ctx: Any, response: Any, case: Any) -> bool | None:
    """Fails on any 500 and on any 5xx that is not a documented answer in the error envelope
    (502 ``engine_error``, 503 ``no_healthy_instance``/…, 504 ``deadline_*``)."""
    why = undocumented_5xx(case.method, case.operation.path, response.status_code,
                           response.content or b"")  # fmt: skip
    if why is not None:
        raise AssertionError(f"{case.method.upper()} {case.operation.path}: {why}")
    return None


class _ThreadedGateway:
    """A gateway on its own event loop in a daemon thread (schemathesis calls are blocking)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.url = ""
        self._server: GatewayServer | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()
        config = parse_config(gateway_config(simulated=[sim("sim-a", time_scale=0.0),
                                                        sim("sim-b", time_scale=0.0)]))  # fmt: skip

        async def up() -> str:
            self._server = GatewayServer(Gateway(config), port=0)
            await self._server.start()
            return self._server.url

        self.url = asyncio.run_coroutine_threadsafe(up(), self.loop).result(30)

    def stop(self) -> None:
        if self._server is not None:
            asyncio.run_coroutine_threadsafe(self._server.close(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def live_gateway() -> Iterator[str]:
    gw = _ThreadedGateway()
    gw.start()
    try:
        yield gw.url
    finally:
        gw.stop()


def test_openapi_document_covers_client_and_admin_routes() -> None:
    doc = openapi_document()
    paths = doc["paths"]
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/ready",
                 "/metrics", "/admin/instances", "/admin/policy", "/admin/requests/{request_id}",
                 "/admin/reload"):  # fmt: skip
        assert path in paths
    assert {"ChatCompletionRequest", "InstanceConfig", "ErrorResponse"} <= set(
        doc["components"]["schemas"]
    )


_SKIP = {("POST", "/admin/instances"), ("POST", "/admin/simulated")}


@schema.parametrize()
@settings(max_examples=15, deadline=None,
          suppress_health_check=list(HealthCheck))  # fmt: skip
def test_no_server_error_for_any_generated_input(case, live_gateway) -> None:
    if (case.method.upper(), case.operation.path) in _SKIP:
        pytest.skip("adds instances at generated addresses")
    headers = dict(ADMIN) if case.operation.path.startswith("/admin") else {}
    case.call_and_validate(base_url=live_gateway, headers=headers, checks=[gateway_answers_only],
                           timeout=30)  # fmt: skip


def test_the_check_tells_documented_answers_from_server_errors() -> None:
    def envelope(status: int, code: str, err_type: str | None = None) -> bytes:
        err = {"message": "m", "type": err_type or _TYPES.get(status, "X"), "param": None,
               "code": code}  # fmt: skip
        return json.dumps({"error": err}).encode()

    post = ("POST", "/v1/chat/completions")
    assert undocumented_5xx(*post, 200, b"{}") is None
    assert undocumented_5xx(*post, 429, b"") is None
    assert undocumented_5xx(*post, 504, envelope(504, "deadline_exceeded")) is None
    assert undocumented_5xx(*post, 504, envelope(504, "deadline_infeasible")) is None
    assert undocumented_5xx(*post, 503, envelope(503, "no_healthy_instance")) is None
    assert undocumented_5xx(*post, 502, envelope(502, "engine_error")) is None
    # real server errors are still caught
    assert undocumented_5xx(*post, 500, envelope(500, "internal_error", "InternalServerError"))
    assert undocumented_5xx(*post, 504, envelope(504, "handler_timeout"))
    assert undocumented_5xx(*post, 504, envelope(504, "deadline_exceeded", "BadGatewayError"))
    assert undocumented_5xx(*post, 503, b"<html>Service Unavailable</html>")
    assert undocumented_5xx(*post, 501, envelope(501, "engine_error"))
    assert undocumented_5xx("GET", "/ready", 503, b'{"ready": false}') is None
    assert undocumented_5xx("GET", "/ready", 503, b"oops")


def test_deadline_headers_declare_what_the_gateway_accepts() -> None:
    params = openapi_document()["paths"]["/v1/chat/completions"]["post"]["parameters"]
    schemas = {p["name"]: p["schema"] for p in params}
    for name in ("X-SLO-Deadline-Ms", "X-TTFT-SLO-Ms", "X-TPOT-SLO-Ms"):
        assert schemas[name] == {"type": "number", "exclusiveMinimum": 0}
    assert schemas["X-Cost-Budget"]["minimum"] == 0


@pytest.mark.parametrize("deadline_ms", ["2.3e-255", "0.001", "1e-9"])
def test_a_sub_millisecond_hard_deadline_is_the_documented_504(live_gateway, deadline_ms) -> None:
    """The input that made the old ``not_a_server_error`` check flaky: valid (> 0), and the
    gateway's correct answer is 504 in the envelope, which the check accepts."""
    body = {"model": "llama-3-8b", "messages": CHAT, "max_tokens": 4}
    headers = {"X-Hard-Deadline": "true", "X-SLO-Deadline-Ms": deadline_ms}
    resp = requests.post(live_gateway + "/v1/chat/completions", json=body, headers=headers,
                         timeout=30)  # fmt: skip
    assert resp.status_code == 504, resp.text
    assert resp.json()["error"]["code"] in DOCUMENTED_5XX[504]
    assert undocumented_5xx("POST", "/v1/chat/completions", 504, resp.content) is None


@pytest.mark.parametrize("deadline_ms", ["0", "-0", "-5", "nan", "inf"])
def test_a_non_positive_deadline_is_a_400(live_gateway, deadline_ms) -> None:
    body = {"model": "llama-3-8b", "messages": CHAT, "max_tokens": 4}
    headers = {"X-Hard-Deadline": "true", "X-SLO-Deadline-Ms": deadline_ms}
    resp = requests.post(live_gateway + "/v1/chat/completions", json=body, headers=headers,
                         timeout=30)  # fmt: skip
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == "X-SLO-Deadline-Ms"

"""``/openapi.json`` describes the API, and no generated input makes the gateway answer 5xx.

schemathesis generates requests from the served document (bodies, headers, path parameters,
with and without the admin token) and sends them to a gateway running over an embedded simulated
fleet in a background thread. Operations that would add instances at generated addresses are
left out (they could resolve arbitrary host names); the admin tests cover them.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from tests.gateway.conftest import ADMIN, gateway_config, sim

from vllm_control_plane.config import parse_config
from vllm_control_plane.gateway import Gateway, GatewayServer
from vllm_control_plane.gateway.openapi import openapi_document

schema = schemathesis.openapi.from_dict(openapi_document())


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
    case.call_and_validate(base_url=live_gateway, headers=headers, checks=[not_a_server_error],
                           timeout=30)  # fmt: skip

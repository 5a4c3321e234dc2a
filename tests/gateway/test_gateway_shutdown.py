"""Graceful shutdown: stop accepting, let in-flight requests finish within the bound, cancel the
rest (aborting them on the engine), leave nothing running."""

from __future__ import annotations

import asyncio

import aiohttp
from tests.gateway.conftest import CHAT, eventually, gateway_config, sim

from vllm_control_plane.config import parse_config
from vllm_control_plane.gateway import Gateway, GatewayServer


async def _post(http: aiohttp.ClientSession, url: str, max_tokens: int, stream: bool = False):
    body = {"model": "llama-3-8b", "messages": CHAT, "max_tokens": max_tokens,
            "ignore_eos": True, "stream": stream}  # fmt: skip
    async with http.post(url + "/v1/chat/completions", json=body) as resp:
        return resp.status, await resp.read()


async def test_in_flight_requests_finish_within_the_grace_period(http) -> None:
    config = parse_config(gateway_config(simulated=[sim("one", time_scale=1.0)]))
    server = GatewayServer(Gateway(config), port=0)
    await server.start()
    engine = server.gateway.fleet.server("one")
    tasks = [asyncio.create_task(_post(http, server.url, 30, stream=s)) for s in (False, True)]
    await eventually(lambda: engine.service.num_active == 2, what="both running")
    await server.close(grace_s=30)
    results = await asyncio.gather(*tasks)
    assert [status for status, _ in results] == [200, 200]
    assert b'"finish_reason":"length"' in results[0][1]
    assert results[1][1].endswith(b"data: [DONE]\n\n")
    counters = server.gateway.cp.core.counters()
    assert counters.completed == 2 and counters.in_flight == 0


async def test_requests_past_the_grace_period_are_cancelled(http) -> None:
    config = parse_config(gateway_config(simulated=[sim("one", time_scale=1.0)]))
    server = GatewayServer(Gateway(config), port=0)
    await server.start()
    gw = server.gateway
    task = asyncio.create_task(_post(http, server.url, 2000))
    await eventually(lambda: gw.in_flight == 1)
    await eventually(lambda: gw.cp.get_status()["running_requests"] == 1)
    await server.close(grace_s=0.05)
    status, body = await task
    assert status == 503 and b"request_cancelled" in body
    assert gw.cp.core.counters().cancelled == 1
    try:
        await _post(http, server.url, 5)
        raise AssertionError("the gateway still accepts connections")
    except aiohttp.ClientConnectionError:
        pass

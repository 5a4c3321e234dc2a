"""The reliability contract as an HTTP client sees it through ``vcp serve``'s app: 429 with
Retry-After on overload, an error frame (never a silent truncation) when a stream breaks, 504 on
a hard deadline, client disconnects aborting the engine request, and transparent retries before
the first token."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson
import pytest
from tests.reliability.faultkit import wait_until

from vllm_control_plane.config import parse_config
from vllm_control_plane.gateway import Gateway, GatewayServer

CHAT = [{"role": "user", "content": "Say something."}]


def _sim(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "model": "llama-3-8b", "time_scale": 0.02, "mean_output_tokens": 8.0,
            **extra}  # fmt: skip


def _config(simulated: list[dict[str, Any]], **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "scheduling_policy": "priority",
        "routing_strategy": "round_robin",
        "monitor": {"health_interval_s": 0.05, "scrape_interval_s": 0.05},
        "simulated": simulated,
    }
    base.update(overrides)
    return base


@pytest.fixture
async def gateway(no_task_leaks: None) -> AsyncIterator[Callable[..., Any]]:
    started: list[GatewayServer] = []

    async def start(simulated: list[dict[str, Any]], **overrides: Any) -> GatewayServer:
        server = GatewayServer(Gateway(parse_config(_config(simulated, **overrides))), port=0)
        await server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        await server.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def _body(max_tokens: int, stream: bool = False) -> dict[str, Any]:
    return {"model": "llama-3-8b", "messages": CHAT, "max_tokens": max_tokens,
            "ignore_eos": True, "stream": stream}  # fmt: skip


async def _post(http, url: str, max_tokens: int = 8, stream: bool = False, **headers: str):
    async with http.post(
        url + "/v1/chat/completions", json=_body(max_tokens, stream), headers=headers
    ) as resp:
        return resp.status, dict(resp.headers), await resp.read()


async def test_overload_answers_429_with_retry_after_lowest_priority_first(gateway, http) -> None:
    server = await gateway(
        [_sim("one", max_concurrent_requests=1)],
        limits={"max_queued": 2},
        server={"retry_after_s": 3},
    )
    url, cp = server.url, server.gateway.cp
    busy = asyncio.create_task(_post(http, url, 7000))
    await wait_until(lambda: cp.get_status()["running_requests"] == 1)
    low = asyncio.create_task(_post(http, url, 4, **{"X-Priority": "low"}))
    normal = asyncio.create_task(_post(http, url, 4))
    await wait_until(lambda: cp.get_status()["pending_requests"] == 2)
    high = asyncio.create_task(_post(http, url, 4, **{"X-Priority": "high"}))  # sheds "low"
    status, headers, body = await asyncio.wait_for(low, 5)
    assert status == 429 and headers["Retry-After"] == "3"
    assert orjson.loads(body)["error"]["code"] == "queue_full"
    status, headers, _ = await _post(http, url, 4, **{"X-Priority": "background"})
    assert status == 429 and headers["Retry-After"] == "3"  # full, nothing lower to shed
    await cp.cancel_request(next(iter(cp.core.requests_on("one"))))
    assert (await busy)[0] == 503  # cancelled by us: the gateway says so
    assert [(await t)[0] for t in (normal, high)] == [200, 200]
    c = cp.core.counters()
    assert c.shed == 1 and c.rejected == 2 and c.in_flight == 0


async def test_stream_that_breaks_after_tokens_ends_with_an_error_frame(gateway, http) -> None:
    server = await gateway([_sim("one", faults={"crash_after_tokens": 3})])
    status, _, body = await _post(http, server.url, 50, stream=True)
    assert status == 200
    frames = [f for f in body.split(b"\n\n") if f]
    assert frames[-1] == b"data: [DONE]"
    error = orjson.loads(frames[-2][6:])["error"]
    assert error["code"] == "engine_error" and "after its first token" in error["message"]
    content = [orjson.loads(f[6:]) for f in frames[:-2]]
    assert content and all("choices" in c for c in content)  # tokens went out first


async def test_failure_before_the_first_token_is_invisible_to_the_client(gateway, http) -> None:
    server = await gateway(
        [_sim("bad", faults={"error_rate": 1.0, "error_status": 503}), _sim("good", seed=2)]
    )
    for _ in range(4):
        status, headers, body = await _post(http, server.url, 5)
        assert status == 200 and headers["X-Instance-Id"] == "good"
        assert orjson.loads(body)["usage"]["completion_tokens"] == 5
    assert server.gateway.cp.core.counters().retries >= 1


async def test_hard_deadline_answers_504(gateway, http) -> None:
    server = await gateway([_sim("one")], limits={"hard_deadlines": True})
    status, _, body = await _post(http, server.url, 7000, **{"X-SLO-Deadline-Ms": "200"})
    assert status == 504 and b"deadline" in body
    await wait_until(lambda: server.gateway.fleet.server("one").service.num_active == 0)
    assert server.gateway.cp.core.counters().timeout == 1


async def test_client_disconnect_mid_stream_aborts_the_engine_request(gateway, http) -> None:
    server = await gateway([_sim("one")])
    sim = server.gateway.fleet.server("one")
    async with http.post(
        server.url + "/v1/chat/completions", json=_body(7000, stream=True)
    ) as resp:
        assert resp.status == 200
        await resp.content.readuntil(b"\n\n")  # the first frame, then hang up
    await wait_until(lambda: sim.engine.stats().num_requests_running == 0, what="engine abort")
    cp = server.gateway.cp
    await wait_until(lambda: cp.core.counters().cancelled == 1)
    assert cp.core.counters().in_flight == 0 and sim.service.num_active == 0


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/no/such/route", "/admin/status"])
async def test_odd_expect_headers_get_a_417_envelope_never_a_500(gateway, http, path) -> None:
    server = await gateway([_sim("one")])
    for expect in ("\xf7<", "something-else"):
        async with http.patch(server.url + path, json={}, headers={"Expect": expect}) as resp:
            assert resp.status == 417
            assert orjson.loads(await resp.read())["error"]["code"] == "expectation_failed"
    async with http.post(
        server.url + "/v1/chat/completions", json=_body(3), headers={"Expect": "100-continue"}
    ) as resp:
        assert resp.status == 200


async def test_unmatched_routes_keep_404_and_405_with_allow(gateway, http) -> None:
    server = await gateway([_sim("one")])
    async with http.get(server.url + "/v1/chat/completions") as resp:
        assert resp.status == 405 and resp.headers["Allow"] == "POST"
        assert orjson.loads(await resp.read())["error"]["code"] == "method_not_allowed"
    async with http.delete(server.url + "/nowhere") as resp:
        assert resp.status == 404
        assert orjson.loads(await resp.read())["error"]["code"] == "not_found"


async def test_client_hanging_up_mid_stream_logs_no_server_error(gateway, http, caplog) -> None:
    server = await gateway([_sim("one")])
    for _ in range(3):
        async with http.post(
            server.url + "/v1/chat/completions", json=_body(7000, stream=True)
        ) as resp:
            await resp.content.readuntil(b"\n\n")
    cp = server.gateway.cp
    await wait_until(lambda: cp.core.counters().cancelled == 3 and server.gateway.in_flight == 0)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_health_probes_leave_nothing_in_the_gateways_capture_table(gateway, http) -> None:
    server = await gateway(
        [_sim("bad", faults={"error_rate": 1.0, "error_status": 500}), _sim("good", seed=2)]
    )
    gw = server.gateway
    for _ in range(12):
        assert (await _post(http, server.url, 2))[0] == 200
    await wait_until(lambda: gw.cp.breakers.state("bad").value != "closed")
    gw.fleet.server("bad").set_faults(error_rate=0.0)
    await wait_until(lambda: gw.cp.rotation.in_rotation("bad"), what="probe readmits bad")
    assert gw.backend._seen == {}

"""The admin API: auth, instances (register, drain, unregister under load), live policy switch,
status, metrics JSON, request status and cancel, config reload."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
import yaml
from tests.gateway.conftest import ADMIN, CHAT, eventually, gateway_config, sim

from vllm_control_plane.config import parse_config
from vllm_control_plane.gateway import Gateway, GatewayServer

ROUTES = [
    ("GET", "/admin/instances"),
    ("POST", "/admin/instances"),
    ("DELETE", "/admin/instances/sim-a"),
    ("POST", "/admin/instances/sim-a/drain"),
    ("GET", "/admin/policy"),
    ("PUT", "/admin/policy"),
    ("GET", "/admin/status"),
    ("GET", "/admin/metrics"),
    ("GET", "/admin/requests/x"),
    ("POST", "/admin/requests/x/cancel"),
    ("POST", "/admin/reload"),
    ("GET", "/admin/config"),
]


async def _call(http: aiohttp.ClientSession, method: str, url: str, **kw: object):
    async with http.request(method, url, **kw) as resp:  # type: ignore[arg-type]
        return resp.status, await resp.json(content_type=None)


async def test_admin_refuses_without_the_token(start_gateway, http) -> None:
    gw = await start_gateway()
    for method, path in ROUTES:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic x"}):
            status, body = await _call(http, method, gw.url + path, headers=headers)
            assert status == 401, (method, path, headers)
            assert body["error"]["code"] == "invalid_api_key"
    assert len(gw.gateway.cp.get_instances()) == 2  # nothing was changed


async def test_admin_disabled_without_a_configured_token(http, monkeypatch) -> None:
    monkeypatch.delenv("VCP_ADMIN_TOKEN", raising=False)
    config = parse_config(gateway_config(admin={}))
    async with GatewayServer(Gateway(config), port=0) as gw:
        status, body = await _call(http, "GET", gw.url + "/admin/status", headers=ADMIN)
    assert status == 403 and body["error"]["code"] == "admin_disabled"


async def test_admin_token_from_environment(http, monkeypatch) -> None:
    monkeypatch.setenv("VCP_TEST_TOKEN", "from-env")
    config = parse_config(gateway_config(admin={"token_env": "VCP_TEST_TOKEN"}))
    async with GatewayServer(Gateway(config), port=0) as gw:
        headers = {"Authorization": "Bearer from-env"}
        status, body = await _call(http, "GET", gw.url + "/admin/status", headers=headers)
    assert status == 200 and body["total_instances"] == 2


async def test_status_metrics_and_instances(start_gateway, http) -> None:
    gw = await start_gateway()
    body = {"model": "llama-3-8b", "messages": CHAT, "max_tokens": 4}
    for _ in range(3):
        async with http.post(gw.url + "/v1/chat/completions", json=body) as resp:
            assert resp.status == 200
    status, out = await _call(http, "GET", gw.url + "/admin/status", headers=ADMIN)
    assert status == 200 and out["counters"]["completed"] == 3
    assert out["gateway"]["accepting"] is True
    status, metrics = await _call(http, "GET", gw.url + "/admin/metrics", headers=ADMIN)
    assert metrics["completed_requests"] == 3 and metrics["p50_latency_ms"] > 0
    status, listing = await _call(http, "GET", gw.url + "/admin/instances", headers=ADMIN)
    ids = {i["instance_id"] for i in listing["instances"]}
    assert ids == {"sim-a", "sim-b"}
    assert all(i["simulated"] and i["is_healthy"] for i in listing["instances"])
    status, cfg = await _call(http, "GET", gw.url + "/admin/config", headers=ADMIN)
    assert cfg["admin"]["token"] == "**********"  # secrets never leave the process


async def test_register_simulated_and_real_instances(start_gateway, http) -> None:
    gw = await start_gateway(simulated=[sim("sim-a")])
    status, out = await _call(http, "POST", gw.url + "/admin/simulated", headers=ADMIN,
                              json={"name": "big", "model": "llama-3-70b", "tp": 4,
                                    "time_scale": 0.02})  # fmt: skip
    assert status == 201 and out["model_name"] == "llama-3-70b" and out["simulated"]
    status, models = await _call(http, "GET", gw.url + "/v1/models")
    assert {m["id"] for m in models["data"]} == {"llama-3-8b", "llama-3-70b"}
    big_url = out["url"]
    status, out = await _call(http, "POST", gw.url + "/admin/instances", headers=ADMIN,
                              json={"instance_id": "alias", "url": big_url,
                                    "model_name": "llama-3-70b"})  # fmt: skip
    assert status == 201 and not out["simulated"]
    status, out = await _call(http, "POST", gw.url + "/admin/instances", headers=ADMIN,
                              json={"instance_id": "alias", "url": big_url})  # fmt: skip
    assert status == 409
    status, out = await _call(http, "POST", gw.url + "/admin/instances", headers=ADMIN,
                              json={"instance_id": "x", "prot": 1})  # fmt: skip
    assert status == 400 and "prot" in out["error"]["message"]
    status, out = await _call(http, "POST", gw.url + "/admin/simulated", headers=ADMIN,
                              json={"name": "bad", "model": "no-such-model"})  # fmt: skip
    assert status == 400
    body = {"model": "llama-3-70b", "messages": CHAT, "max_tokens": 3}
    async with http.post(gw.url + "/v1/chat/completions", json=body) as resp:
        assert resp.status == 200 and resp.headers["X-Instance-Id"] in {"big", "alias"}


async def _load(http: aiohttp.ClientSession, url: str, n: int, max_tokens: int = 20,
                stream: bool = False) -> list[tuple[int, str]]:  # fmt: skip
    body = {"model": "llama-3-8b", "messages": CHAT, "max_tokens": max_tokens,
            "ignore_eos": True, "stream": stream}  # fmt: skip

    async def one(i: int) -> tuple[int, str]:
        headers = {"X-Priority": ["high", "normal", "low"][i % 3]}
        async with http.post(url + "/v1/chat/completions", json=body, headers=headers) as r:
            payload = await r.read()
            assert payload.endswith(b"data: [DONE]\n\n") if stream else b"choices" in payload
            return r.status, r.headers.get("X-Instance-Id", "")

    return await asyncio.gather(*(one(i) for i in range(n)))


async def test_policy_and_strategy_switched_live_under_load(start_gateway, http) -> None:
    gw = await start_gateway(
        simulated=[sim("sim-a", time_scale=0.2, max_concurrent_requests=4),
                   sim("sim-b", time_scale=0.2, max_concurrent_requests=4)],
    )  # fmt: skip
    load = asyncio.create_task(_load(http, gw.url, 40))
    await eventually(lambda: gw.gateway.cp.get_status()["pending_requests"] > 0, what="queue")
    status, out = await _call(http, "PUT", gw.url + "/admin/policy", headers=ADMIN,
                              json={"scheduling_policy": "fifo",
                                    "routing_strategy": "round_robin"})  # fmt: skip
    assert status == 200
    assert out["scheduling_policy"] == "fifo" and out["routing_strategy"] == "round_robin"
    results = await load
    assert [s for s, _ in results] == [200] * 40
    status, out = await _call(http, "PUT", gw.url + "/admin/policy", headers=ADMIN,
                              json={"scheduling_policy": "nope"})  # fmt: skip
    assert status == 400 and "valid" in out["error"]["message"]
    status, out = await _call(http, "GET", gw.url + "/admin/policy", headers=ADMIN)
    assert out["scheduling_policy"] == "fifo" and "slo_aware" in out["available_policies"]


@pytest.mark.parametrize("stream", [False, True])
async def test_instance_unregistered_under_load_loses_no_request(start_gateway, http,
                                                                 stream) -> None:  # fmt: skip
    gw = await start_gateway(
        simulated=[sim("sim-a", time_scale=0.2, max_concurrent_requests=4),
                   sim("sim-b", time_scale=0.2, max_concurrent_requests=4)],
    )  # fmt: skip
    load = asyncio.create_task(_load(http, gw.url, 30, stream=stream))
    core = gw.gateway.cp.core
    await eventually(lambda: core.requests_on("sim-a"), what="work on sim-a")
    status, out = await _call(http, "DELETE", gw.url + "/admin/instances/sim-a", headers=ADMIN)
    assert status == 202 and out["unregistered"]
    results = await load
    assert [s for s, _ in results] == [200] * 30
    await eventually(lambda: all(i.instance_id != "sim-a" for i in gw.gateway.cp.get_instances()),
                     what="sim-a gone")  # fmt: skip
    await eventually(lambda: "sim-a" not in gw.gateway.fleet, what="sim server stopped")
    after = await _load(http, gw.url, 4)
    assert {iid for _, iid in after} == {"sim-b"}
    status, _ = await _call(http, "DELETE", gw.url + "/admin/instances/sim-a", headers=ADMIN)
    assert status == 404


async def test_drain_and_resume(start_gateway, http) -> None:
    gw = await start_gateway()
    status, out = await _call(http, "POST", gw.url + "/admin/instances/sim-a/drain",
                              headers=ADMIN)  # fmt: skip
    assert status == 200 and out["draining"]
    assert {iid for _, iid in await _load(http, gw.url, 6)} == {"sim-b"}
    status, _ = await _call(http, "POST", gw.url + "/admin/instances/sim-a/resume", headers=ADMIN)
    assert status == 200
    assert gw.gateway.cp.core.instance("sim-a").is_available
    for action in ("drain", "resume"):
        status, out = await _call(http, "POST", gw.url + f"/admin/instances/nope/{action}",
                                  headers=ADMIN)  # fmt: skip
        assert status == 404 and out["error"]["code"] == "instance_not_found"


async def test_drain_under_load_lets_running_requests_finish(start_gateway, http) -> None:
    gw = await start_gateway(
        simulated=[sim("sim-a", time_scale=0.2, max_concurrent_requests=4),
                   sim("sim-b", time_scale=0.2, max_concurrent_requests=4)],
    )  # fmt: skip
    cp = gw.gateway.cp
    load = asyncio.create_task(_load(http, gw.url, 16))
    await eventually(lambda: cp.core.requests_on("sim-a"), what="work on sim-a")
    status, out = await _call(http, "POST", gw.url + "/admin/instances/sim-a/drain",
                              headers=ADMIN)  # fmt: skip
    assert status == 200 and out["running_requests"]  # those finish there, nothing aborted
    assert [s for s, _ in await load] == [200] * 16
    assert cp.get_instance_metrics("sim-a")["is_available"] is False
    assert {iid for _, iid in await _load(http, gw.url, 4)} == {"sim-b"}
    status, out = await _call(http, "POST", gw.url + "/admin/instances/sim-a/resume",
                              headers=ADMIN)  # fmt: skip
    assert status == 200 and out["draining"] is False
    assert cp.core.counters().failed == 0 and cp.core.counters().cancelled == 0


async def test_manager_drain_and_resume_are_public() -> None:
    from vllm_control_plane import ControlPlaneManager, ExecutionInstance

    cp = ControlPlaneManager(enable_monitoring=False)
    cp.register_instance(ExecutionInstance("a", "127.0.0.1", 1, "m", gpu_memory_gb=80))
    assert cp.drain_instance("a") == []  # nothing running there
    assert cp.get_instance_metrics("a")["is_available"] is False
    cp.resume_instance("a")
    assert cp.get_instance_metrics("a")["is_available"] is True
    for call in (cp.drain_instance, cp.resume_instance):
        with pytest.raises(KeyError):
            call("nope")


async def test_request_status_and_cancel(start_gateway, http) -> None:
    gw = await start_gateway(simulated=[sim("slow", time_scale=1.0)])
    body = {"model": "llama-3-8b", "messages": CHAT, "max_tokens": 400, "ignore_eos": True}

    async def call() -> tuple[int, dict]:
        async with http.post(gw.url + "/v1/chat/completions", json=body,
                             headers={"X-Request-Id": "to-cancel"}) as r:  # fmt: skip
            return r.status, await r.json()

    task = asyncio.create_task(call())
    await eventually(lambda: gw.gateway.in_flight == 1)
    await eventually(lambda: gw.gateway.cp.core.status("to-cancel").value == "running")
    status, out = await _call(http, "GET", gw.url + "/admin/requests/to-cancel", headers=ADMIN)
    assert status == 200 and out["instance_id"] == "slow" and out["priority"] == "normal"
    status, out = await _call(http, "POST", gw.url + "/admin/requests/to-cancel/cancel",
                              headers=ADMIN)  # fmt: skip
    assert status == 200 and out["cancelled"] and out["status"] == "cancelled"
    status, payload = await task
    assert status == 503 and payload["error"]["code"] == "request_cancelled"
    status, _ = await _call(http, "GET", gw.url + "/admin/requests/nope", headers=ADMIN)
    assert status == 404


async def test_reload_adds_drains_and_switches(tmp_path, http) -> None:
    path = tmp_path / "cluster.yaml"
    first = gateway_config(simulated=[sim("sim-a"), sim("sim-b")])
    path.write_text(yaml.safe_dump(first))
    async with GatewayServer(Gateway(parse_config(first), config_path=path), port=0) as gw:
        changed = gateway_config(simulated=[sim("sim-b"), sim("sim-c")],
                                 scheduling_policy="fifo", routing_strategy="least_request",
                                 limits={"max_queued": 5})  # fmt: skip
        path.write_text(yaml.safe_dump(changed))
        status, out = await _call(http, "POST", gw.url + "/admin/reload", headers=ADMIN)
        assert status == 200, out
        assert out["added"] == ["sim-c"] and out["removed"] == ["sim-a"]
        assert out["applied"] == ["limits.max_queued"] and out["restart_needed"] == []
        assert gw.gateway.cp.core.limits.max_queued == 5
        await eventually(lambda: {i.instance_id for i in gw.gateway.cp.get_instances()}
                         == {"sim-b", "sim-c"}, what="fleet follows the file")  # fmt: skip
        assert gw.gateway.cp.core.policy_name == "fifo"
        assert gw.gateway.cp.router.routing_strategy == "least_request"
        path.write_text("scheduling_policy: [oops")
        status, out = await _call(http, "POST", gw.url + "/admin/reload", headers=ADMIN)
        assert status == 400 and out["error"]["code"] == "invalid_config"
        assert gw.gateway.cp.core.policy_name == "fifo"  # the running config is kept

"""Tenants through the HTTP API: request ids are per tenant (no collision, no peeking, no
cancelling across tenants), rate and concurrency limits answer 429 with ``Retry-After`` in the
OpenAI envelope and are counted in ``/metrics``, and limits survive a config reload."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families
from tests.gateway.conftest import ADMIN, CHAT, eventually, gateway_config, sim

from vllm_control_plane.config import parse_config

KEYS = {"acme": "sk-acme-1", "globex": "sk-globex-1"}


def _tenants(acme_limit: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    acme: dict[str, Any] = {"name": "acme", "api_keys": [KEYS["acme"]]}
    if acme_limit:
        acme["rate_limit"] = acme_limit
    return [acme, {"name": "globex", "api_keys": [KEYS["globex"]]}]


def _headers(tenant: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[tenant]}", **extra}


def _body(max_tokens: int = 3, stream: bool = False) -> dict[str, Any]:
    return {"model": "llama-3-8b", "messages": CHAT, "max_tokens": max_tokens,
            "ignore_eos": True, "stream": stream}  # fmt: skip


async def _post(http: aiohttp.ClientSession, url: str, tenant: str, max_tokens: int = 3,
                **headers: str) -> tuple[int, Mapping[str, str], dict[str, Any]]:  # fmt: skip
    async with http.post(url + "/v1/chat/completions", json=_body(max_tokens),
                         headers=_headers(tenant, **headers)) as r:  # fmt: skip
        return r.status, r.headers.copy(), orjson.loads(await r.read())  # (case-insensitive)


async def _admin(http: aiohttp.ClientSession, method: str, url: str) -> tuple[int, Any]:
    async with http.request(method, url, headers=ADMIN) as r:
        return r.status, await r.json()


def _rejections(text: str) -> dict[str, float]:
    for family in text_string_to_metric_families(text):
        if family.name == "vcp_rejections":
            return {s.labels["reason"]: s.value for s in family.samples
                    if s.name == "vcp_rejections_total"}  # fmt: skip
    return {}


# ---------------------------------------------------------------- request ids


async def test_request_ids_are_per_tenant(start_gateway, http) -> None:
    gw = await start_gateway(tenants=_tenants(), simulated=[sim("slow", time_scale=1.0)])
    core = gw.gateway.cp.core
    long = asyncio.create_task(_post(http, gw.url, "acme", 2000, **{"X-Request-Id": "abc"}))
    await eventually(lambda: core.is_live("acme/abc"), what="acme's abc in flight")
    # the same id from another tenant is another request: no 409, echoed back unchanged
    status, headers, _ = await _post(http, gw.url, "globex", **{"X-Request-Id": "abc"})
    assert status == 200 and headers["X-Request-Id"] == "abc"
    # an id spelled like the other tenant's internal one stays in the sender's namespace
    status, _, _ = await _post(http, gw.url, "globex", **{"X-Request-Id": "acme/abc"})
    assert status == 200 and core.record("globex/acme/abc").request.tenant == "globex"
    assert core.is_live("acme/abc")  # untouched
    # the same tenant reusing a live id: 409, with its own id only in the message
    status, headers, payload = await _post(http, gw.url, "acme", **{"X-Request-Id": "abc"})
    assert status == 409 and payload["error"]["code"] == "duplicate_request_id"
    assert headers["X-Request-Id"] == "abc" and "acme/" not in payload["error"]["message"]
    # the admin API addresses a request by the client's id and its tenant
    status, view = await _admin(http, "GET", gw.url + "/admin/requests/abc?tenant=acme")
    assert status == 200 and view["status"] == "running"
    assert (view["tenant"], view["client_request_id"]) == ("acme", "abc")
    status, view = await _admin(http, "GET", gw.url + "/admin/requests/abc?tenant=globex")
    assert status == 200 and view["status"] == "completed"
    assert (await _admin(http, "GET", gw.url + "/admin/requests/abc"))[0] == 404
    # cancelling globex's "abc" leaves acme's running; acme's own cancel ends it
    status, out = await _admin(http, "POST", gw.url + "/admin/requests/abc/cancel?tenant=globex")
    assert status == 200 and out["cancelled"] is False and core.is_live("acme/abc")
    status, out = await _admin(http, "POST", gw.url + "/admin/requests/abc/cancel?tenant=acme")
    assert status == 200 and out["cancelled"] is True
    status, headers, payload = await long
    assert status == 503 and headers["X-Request-Id"] == "abc"
    assert payload["error"]["code"] == "request_cancelled"
    # globex's "abc" completed: globex re-sending it is refused, acme (cancelled) may retry
    status, _, payload = await _post(http, gw.url, "globex", **{"X-Request-Id": "abc"})
    assert status == 409 and "already completed" in payload["error"]["message"]
    assert "globex/" not in payload["error"]["message"]
    status, headers, _ = await _post(http, gw.url, "acme", **{"X-Request-Id": "abc"})
    assert status == 200 and headers["X-Request-Id"] == "abc"


async def test_streams_echo_the_clients_id(start_gateway, http) -> None:
    gw = await start_gateway(tenants=_tenants())
    async with http.post(gw.url + "/v1/chat/completions", json=_body(4, stream=True),
                         headers=_headers("acme", **{"X-Request-Id": "s-1"})) as r:  # fmt: skip
        assert r.status == 200 and r.headers["X-Request-Id"] == "s-1"
        assert (await r.read()).endswith(b"data: [DONE]\n\n")
    async with http.post(gw.url + "/v1/chat/completions", json=_body(4),
                         headers=_headers("acme")) as r:  # fmt: skip
        generated = r.headers["X-Request-Id"]  # no id sent: one is made, and shown bare
    assert "/" not in generated
    assert gw.gateway.cp.core.record(f"acme/{generated}").request.tenant == "acme"


async def test_a_shed_request_learns_nothing_of_the_request_that_displaced_it(
    start_gateway, http
) -> None:
    gw = await start_gateway(
        tenants=_tenants(), limits={"max_queued": 1},
        simulated=[sim("one", time_scale=1.0, max_concurrent_requests=1)],
    )  # fmt: skip
    cp = gw.gateway.cp
    busy = asyncio.create_task(_post(http, gw.url, "acme", 2000))
    await eventually(lambda: cp.get_status()["running_requests"] == 1, what="busy")
    low = asyncio.create_task(_post(http, gw.url, "acme", **{"X-Priority": "low"}))
    await eventually(lambda: cp.get_status()["pending_requests"] == 1, what="low queued")
    high = asyncio.create_task(
        _post(http, gw.url, "globex", **{"X-Priority": "high", "X-Request-Id": "globex-secret"})
    )
    status, _, payload = await low
    assert status == 429 and payload["error"]["code"] == "queue_full"
    assert "globex" not in orjson.dumps(payload).decode()
    await cp.cancel_request(next(iter(cp.core.requests_on("one"))))
    assert (await busy)[0] == 503 and (await high)[0] == 200


# ---------------------------------------------------------------- limits


async def test_rate_limit_answers_429_with_the_buckets_retry_after(start_gateway, http) -> None:
    gw = await start_gateway(tenants=_tenants({"requests_per_s": 0.01, "burst": 2}))
    assert [(await _post(http, gw.url, "acme"))[0] for _ in range(2)] == [200, 200]
    status, headers, payload = await _post(http, gw.url, "acme", **{"X-Request-Id": "r-3"})
    assert status == 429 and headers["X-Request-Id"] == "r-3"
    assert 90 <= int(headers["Retry-After"]) <= 100  # one token at 0.01/s: ~100 s away
    err = payload["error"]
    assert (err["type"], err["code"]) == ("RateLimitError", "rate_limited")
    assert "acme" in err["message"] and "0.01 requests/s" in err["message"]
    assert (await _post(http, gw.url, "globex"))[0] == 200  # other tenants are unaffected
    async with http.get(gw.url + "/metrics") as r:
        assert _rejections(await r.text()) == {"rate_limited": 1.0}
    auth = gw.gateway.auth
    auth.clock = lambda: time.monotonic() + 150.0  # a fake clock: 150 s later
    assert (await _post(http, gw.url, "acme"))[0] == 200
    assert auth.limits_snapshot()["acme"]["in_flight"] == 0


async def test_reload_keeps_a_spent_bucket_and_applies_new_limits(start_gateway, http) -> None:
    slow = {"requests_per_s": 0.01, "burst": 1}
    gw = await start_gateway(tenants=_tenants(slow))
    assert (await _post(http, gw.url, "acme"))[0] == 200
    assert (await _post(http, gw.url, "acme"))[0] == 429
    await gw.gateway.reload(parse_config(gateway_config(tenants=_tenants(slow))))
    assert (await _post(http, gw.url, "acme"))[0] == 429  # a reload grants no fresh burst
    fast = {"requests_per_s": 100.0, "burst": 5}
    await gw.gateway.reload(parse_config(gateway_config(tenants=_tenants(fast))))
    assert (await _post(http, gw.url, "acme"))[0] == 200
    _, status_view = await _admin(http, "GET", gw.url + "/admin/status")
    limits = status_view["gateway"]["tenant_limits"]["acme"]
    assert (limits["requests_per_s"], limits["burst"], limits["in_flight"]) == (100.0, 5.0, 0)


async def test_concurrency_limit_counts_requests_until_they_end(start_gateway, http) -> None:
    gw = await start_gateway(
        tenants=_tenants({"max_concurrent": 1}), server={"retry_after_s": 7},
        simulated=[sim("slow", time_scale=1.0)],
    )  # fmt: skip
    limiter = gw.gateway.auth.limiter
    async with http.post(gw.url + "/v1/chat/completions", json=_body(2000, stream=True),
                         headers=_headers("acme")) as stream:  # fmt: skip
        assert stream.status == 200
        assert (await stream.content.readline()).startswith(b"data: ")  # it is running
        status, headers, payload = await _post(http, gw.url, "acme")
        assert status == 429 and headers["Retry-After"] == "7"
        assert payload["error"]["code"] == "concurrency_limited"
        assert (await _post(http, gw.url, "globex"))[0] == 200
    # the client hung up: its request is cancelled and its slot freed
    await eventually(lambda: limiter.in_flight("acme") == 0, what="slot released")
    assert (await _post(http, gw.url, "acme"))[0] == 200
    async with http.get(gw.url + "/metrics") as r:
        assert _rejections(await r.text()) == {"concurrency_limited": 1.0}


async def test_refused_and_failed_requests_never_leak_a_slot(start_gateway, http) -> None:
    gw = await start_gateway(tenants=_tenants({"max_concurrent": 1}))
    limiter = gw.gateway.auth.limiter
    url = gw.url + "/v1/chat/completions"
    bad = [b"{", b'{"model": "llama-3-8b"}', b'{"model": "gpt-9", "messages": []}']
    for raw in bad:
        async with http.post(url, data=raw, headers=_headers("acme")) as r:
            assert r.status in (400, 404)
    async with http.post(url, json=_body(), headers=_headers("acme", **{"X-Priority": "x"})) as r:
        assert r.status == 400
    gw.gateway.fleet.server("sim-a").set_faults(error_rate=1.0)  # engine failures: 502
    gw.gateway.fleet.server("sim-b").set_faults(error_rate=1.0)
    assert (await _post(http, gw.url, "acme"))[0] == 502
    gw.gateway.fleet.server("sim-a").set_faults(error_rate=0.0)
    gw.gateway.fleet.server("sim-b").set_faults(error_rate=0.0)
    assert limiter.in_flight("acme") == 0
    assert (await _post(http, gw.url, "acme", 3))[0] == 200

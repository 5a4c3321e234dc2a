"""Every fault mode, switched on by the constructor and at run time through /admin/faults."""

from __future__ import annotations

import asyncio
import dataclasses
import json

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from vllm_control_plane.sim.faults import FaultConfig, FaultInjector, error_type_for_status
from vllm_control_plane.sim.launcher import SimServer
from vllm_control_plane.sim.types import EngineSpec

STREAM = {"prompt": "tell me", "max_tokens": 50, "ignore_eos": True, "stream": True}


async def _admin(srv: SimServer, patch: dict | None = None) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as s:
        req = (
            s.get(srv.url + "/admin/faults")
            if patch is None
            else s.post(srv.url + "/admin/faults", json=patch)
        )
        async with req as r:
            return r.status, orjson.loads(await r.read())


async def _complete(srv: SimServer, body: dict | None = None) -> tuple[int, dict]:
    body = body or {"prompt": "x", "max_tokens": 3}
    async with aiohttp.ClientSession() as s, s.post(srv.url + "/v1/completions", json=body) as r:
        return r.status, orjson.loads(await r.read())


async def _health(srv: SimServer) -> int:
    async with aiohttp.ClientSession() as s, s.get(srv.url + "/health") as r:
        return r.status


def _e2e_sum(text: str) -> float:
    for fam in text_string_to_metric_families(text):
        if fam.name == "vllm:e2e_request_latency_seconds":
            return next(x.value for x in fam.samples if x.name.endswith("_sum"))
    raise AssertionError("no e2e histogram")


async def _metrics(srv: SimServer) -> str:
    async with aiohttp.ClientSession() as s, s.get(srv.url + "/metrics") as r:
        return await r.text()


# ------------------------------------------------------------------ config and admin


def test_fault_config_is_strict() -> None:
    with pytest.raises(ValueError):
        FaultConfig(error_rate=1.5)
    with pytest.raises(ValueError):
        FaultConfig.model_validate({"typo": 1})
    assert FaultConfig().updated({"hang": True}).hang is True
    assert error_type_for_status(503) == "ServiceUnavailableError"
    assert error_type_for_status(500) == "InternalServerError"
    assert error_type_for_status(404) == "NotFoundError"


def test_error_rate_dice_are_seeded() -> None:
    def pattern(seed: int) -> list[bool]:
        inj = FaultInjector(FaultConfig(error_rate=0.5), seed=seed)
        return [inj.should_fail() for _ in range(40)]

    assert pattern(3) == pattern(3) and pattern(3) != pattern(4)
    assert 5 < sum(pattern(3)) < 35


async def test_admin_get_and_partial_update(sim_server: SimServer) -> None:
    status, cfg = await _admin(sim_server)
    assert status == 200 and cfg == FaultConfig().model_dump()
    status, cfg = await _admin(sim_server, {"unhealthy": True})
    assert status == 200 and cfg["unhealthy"] is True and cfg["error_rate"] == 0.0
    assert sim_server.faults.unhealthy is True
    status, err = await _admin(sim_server, {"nonsense": 1})
    assert status == 400 and "nonsense" in err["error"]["message"]
    status, err = await _admin(sim_server, {"error_rate": 7})
    assert status == 400 and sim_server.faults.error_rate == 0.0


# ------------------------------------------------------------------ error rate


async def test_error_rate_from_constructor(sim_spec: EngineSpec) -> None:
    faults = FaultConfig(error_rate=1.0, error_status=503)
    async with SimServer(sim_spec, time_scale=0.02, faults=faults) as srv:
        status, body = await _complete(srv)
        assert status == 503
        assert body["error"]["type"] == "ServiceUnavailableError" and body["error"]["code"] == 503
        assert not srv.engine.has_unfinished() and srv.engine.stats().prompt_tokens == 0


async def test_error_rate_at_run_time(sim_server: SimServer) -> None:
    await _admin(sim_server, {"error_rate": 1.0, "error_status": 429})
    assert (await _complete(sim_server))[0] == 429
    await _admin(sim_server, {"error_rate": 0.0})
    assert (await _complete(sim_server))[0] == 200


# ------------------------------------------------------------------ hang


async def _hung_request_released(srv: SimServer, wait_until) -> None:
    async with aiohttp.ClientSession() as s:
        task = asyncio.create_task(s.post(srv.url + "/v1/completions", json={"prompt": "x"}))
        await wait_until(lambda: srv.service.num_hanging == 1, what="a hung request")
        assert not task.done() and not srv.engine.has_unfinished()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    await wait_until(lambda: srv.service.num_hanging == 0, what="hung handler released")


async def test_hang_from_constructor(sim_spec: EngineSpec, wait_until) -> None:
    async with SimServer(sim_spec, time_scale=0.02, faults=FaultConfig(hang=True)) as srv:
        await _hung_request_released(srv, wait_until)
        assert await _health(srv) == 200  # only inference requests hang


async def test_hang_at_run_time_and_close_releases(sim_server: SimServer, wait_until) -> None:
    await _admin(sim_server, {"hang": True})
    await _hung_request_released(sim_server, wait_until)
    await _admin(sim_server, {"hang": False})
    assert (await _complete(sim_server))[0] == 200


async def test_close_with_a_hung_request(sim_spec: EngineSpec, wait_until) -> None:
    srv = SimServer(sim_spec, time_scale=0.02, faults=FaultConfig(hang=True))
    await srv.start()
    async with aiohttp.ClientSession() as s:
        task = asyncio.create_task(s.post(srv.url + "/v1/completions", json={"prompt": "x"}))
        await wait_until(lambda: srv.service.num_hanging == 1)
        await srv.close()  # must not wait for the hung handler
        with pytest.raises(aiohttp.ClientError):
            await task


# ------------------------------------------------------------------ crash


async def _read_until_cut(srv: SimServer) -> bytes:
    got = b""
    async with aiohttp.ClientSession() as s, s.post(srv.url + "/v1/completions", json=STREAM) as r:
        with pytest.raises(aiohttp.ClientPayloadError):
            async for chunk in r.content.iter_any():
                got += chunk
    return got


def _tokens_in(raw: bytes) -> int:
    frames = [f for f in raw.split(b"\n\n") if f.startswith(b'data: {"id"')]
    return sum(len(json.loads(f[6:])["choices"][0]["text"].split()) for f in frames)


async def test_crash_cuts_streams_after_n_tokens(sim_spec: EngineSpec, wait_until) -> None:
    async with SimServer(sim_spec, time_scale=0.02, faults=FaultConfig(crash_after_tokens=4)) as s:
        raws = await asyncio.gather(_read_until_cut(s), _read_until_cut(s))
        # The stream that reached 4 tokens first crashed the server; the other one had sent
        # what it had by then (up to 4).
        assert sorted(_tokens_in(r) for r in raws)[-1] == 4
        assert all(b"[DONE]" not in r for r in raws)
        await wait_until(lambda: not s.engine.has_unfinished(), what="engine cleared")
        assert s.service.num_active == 0


async def test_crash_at_run_time(sim_server: SimServer) -> None:
    sim_server.set_faults(crash_after_tokens=2)
    assert _tokens_in(await _read_until_cut(sim_server)) == 2
    await _admin(sim_server, {"crash_after_tokens": None})
    assert (await _complete(sim_server))[0] == 200


# ------------------------------------------------------------------ mid-stream error


async def test_midstream_error_frame(sim_spec: EngineSpec) -> None:
    faults = FaultConfig(midstream_error_after_tokens=3)
    async with SimServer(sim_spec, time_scale=0.02, faults=faults) as srv:
        async with (
            aiohttp.ClientSession() as s,
            s.post(srv.url + "/v1/completions", json=STREAM) as r,
        ):
            assert r.status == 200
            raw = await r.read()
        assert _tokens_in(raw) == 3
        frames = raw.split(b"\n\n")
        assert frames[-3].startswith(b'data: {"error": {"message": ')  # json.dumps spacing
        assert frames[-2:] == [b"data: [DONE]", b""]
        error = json.loads(frames[-3][6:])["error"]
        assert error["type"] == "InternalServerError" and error["code"] == 500
        assert not srv.engine.has_unfinished()
        status, body = await _complete(srv, {"prompt": "x", "max_tokens": 20, "ignore_eos": True})
        assert status == 500 and body["error"]["type"] == "InternalServerError"


async def test_midstream_error_at_run_time(sim_server: SimServer) -> None:
    await _admin(sim_server, {"midstream_error_after_tokens": 1})
    status, _ = await _complete(sim_server, {"prompt": "x", "max_tokens": 5, "ignore_eos": True})
    assert status == 500
    await _admin(sim_server, {"midstream_error_after_tokens": None})
    assert (await _complete(sim_server))[0] == 200


# ------------------------------------------------------------------ slowdown


async def test_slowdown_scales_model_time(sim_spec: EngineSpec) -> None:
    spec = dataclasses.replace(sim_spec, jitter=0.0)
    body = {"prompt": [5] * 40, "max_tokens": 10, "ignore_eos": True}
    sums = []
    for factor in (1.0, 3.0):
        faults = FaultConfig(slowdown=factor)
        async with SimServer(spec, time_scale=0.02, faults=faults) as srv:
            assert (await _complete(srv, body))[0] == 200
            sums.append(_e2e_sum(await _metrics(srv)))
    assert sums[1] == pytest.approx(3 * sums[0], rel=1e-6)


async def test_slowdown_at_run_time(sim_spec: EngineSpec) -> None:
    spec = dataclasses.replace(sim_spec, jitter=0.0, enable_prefix_caching=False)
    body = {"prompt": [5] * 40, "max_tokens": 10, "ignore_eos": True}
    async with SimServer(spec, time_scale=0.02) as srv:
        await _complete(srv, body)
        first = _e2e_sum(await _metrics(srv))
        await _admin(srv, {"slowdown": 2.0})
        await _complete(srv, body)
        second = _e2e_sum(await _metrics(srv)) - first
    assert second == pytest.approx(2 * first, rel=1e-6)


# ------------------------------------------------------------------ health flip


async def test_unhealthy(sim_spec: EngineSpec) -> None:
    async with SimServer(sim_spec, time_scale=0.02, faults=FaultConfig(unhealthy=True)) as srv:
        assert await _health(srv) == 503
        assert (await _complete(srv))[0] == 200  # still serves
        await _admin(srv, {"unhealthy": False})
        assert await _health(srv) == 200
        await _admin(srv, {"unhealthy": True})
        assert await _health(srv) == 503


# ------------------------------------------------------------------ startup delay


async def _refused(srv: SimServer) -> bool:
    try:
        await _health(srv)
    except aiohttp.ClientConnectorError:
        return True
    return False


async def test_startup_delay(sim_spec: EngineSpec) -> None:
    faults = FaultConfig(startup_delay_s=0.5)
    async with SimServer(sim_spec, time_scale=0.02, faults=faults) as srv:
        assert srv.port != 0 and not srv.ready
        assert await _refused(srv)
        await srv.wait_ready(timeout=5)
        assert await _health(srv) == 200


async def test_startup_delay_at_run_time_restarts(sim_server: SimServer, wait_until) -> None:
    status, cfg = await _admin(sim_server, {"startup_delay_s": 0.5})
    assert status == 200 and cfg["startup_delay_s"] == 0.5
    await wait_until(lambda: not sim_server.ready, what="listener closed")
    assert await _refused(sim_server)
    await sim_server.wait_ready(timeout=5)
    assert await _health(sim_server) == 200
    assert (await _complete(sim_server))[0] == 200

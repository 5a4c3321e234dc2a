"""A client that goes away aborts its engine request (and frees its KV blocks)."""

from __future__ import annotations

import asyncio
import dataclasses

import aiohttp

from vllm_control_plane.sim.launcher import SimServer
from vllm_control_plane.sim.types import EngineSpec

LONG = {"prompt": "go on", "max_tokens": 4000, "ignore_eos": True}


async def test_disconnect_mid_stream_aborts(sim_spec: EngineSpec, wait_until) -> None:
    async with SimServer(sim_spec, time_scale=1.0) as srv, aiohttp.ClientSession() as s:
        resp = await s.post(srv.url + "/v1/completions", json={**LONG, "stream": True})
        first = await resp.content.readuntil(b"\n\n")
        assert first.startswith(b"data: {")
        assert srv.engine.stats().num_requests_running == 1
        assert srv.engine.stats().kv_cache_usage_perc > 0
        resp.close()  # drop the connection mid-stream
        await wait_until(lambda: not srv.engine.has_unfinished(), what="engine abort")
        stats = srv.engine.stats()
        assert stats.num_requests_running == 0 and stats.kv_cache_usage_perc == 0
        assert stats.request_success.get("abort") == 1
        assert srv.service.num_active == 0


async def test_disconnect_before_first_token_aborts_waiting(
    sim_spec: EngineSpec, wait_until
) -> None:
    spec = dataclasses.replace(sim_spec, max_num_seqs=1)  # the second request has to wait
    async with SimServer(spec, time_scale=1.0) as srv, aiohttp.ClientSession() as s:
        busy = await s.post(srv.url + "/v1/completions", json={**LONG, "stream": True})
        await busy.content.readuntil(b"\n\n")
        queued = await s.post(srv.url + "/v1/completions", json={**LONG, "stream": True})
        assert queued.status == 200  # headers are out; no token yet
        await wait_until(lambda: srv.engine.stats().num_requests_waiting == 1, what="queued")
        queued.close()
        await wait_until(lambda: srv.engine.stats().num_requests_waiting == 0, what="abort")
        assert srv.engine.stats().num_requests_running == 1  # the other one is untouched
        busy.close()
        await wait_until(lambda: not srv.engine.has_unfinished(), what="second abort")


async def test_disconnect_non_streaming_aborts(sim_spec: EngineSpec, wait_until) -> None:
    async with SimServer(sim_spec, time_scale=1.0) as srv, aiohttp.ClientSession() as s:
        task = asyncio.create_task(s.post(srv.url + "/v1/completions", json=LONG))
        await wait_until(lambda: srv.engine.stats().num_requests_running == 1, what="running")
        task.cancel()  # the client gives up: its connection closes
        await asyncio.gather(task, return_exceptions=True)
        await wait_until(lambda: not srv.engine.has_unfinished(), what="engine abort")
        assert srv.service.num_active == 0

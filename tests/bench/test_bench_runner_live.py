"""The live runner against an in-process simulated vLLM server (loopback, port 0)."""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from vllm_control_plane.bench.report import summarize
from vllm_control_plane.bench.runner_live import LiveOptions, live_workload, run_live
from vllm_control_plane.bench.workloads import (
    LengthDist,
    RequestClass,
    SyntheticSpec,
    SyntheticWorkload,
)
from vllm_control_plane.sim.launcher import SimServer
from vllm_control_plane.sim.types import EngineSpec

FAST = 0.02  # wall seconds per model second: a request takes milliseconds


def requests(n_per_s: float = 40, seconds: float = 0.5):
    cls = RequestClass("c", ttft_slo_ms=5000, tpot_slo_ms=1000, e2e_slo_ms=20_000)
    spec = SyntheticSpec(
        rate=n_per_s,
        classes=(cls,),
        prompt=LengthDist(64, 0.5, 8, 200),
        output=LengthDist(12, 0.5, 2, 40),
    )
    return SyntheticWorkload(spec, seed=5).requests(seconds)


async def test_live_run_measures_every_request_from_the_stream() -> None:
    reqs = requests()
    async with SimServer(EngineSpec(model="llama-3-8b", seed=1), time_scale=FAST) as srv:
        result = await run_live(srv.url, reqs, LiveOptions(timeout_s=30), duration_s=0.5)
    assert len(result.outcomes) == len(reqs) > 5
    for o, req in zip(result.outcomes, reqs, strict=True):
        assert o.status == "completed", o.reason
        assert o.output_tokens == req.output_tokens  # max_tokens + ignore_eos: exact length
        assert o.ttft is not None and o.e2e is not None and 0 < o.ttft <= o.e2e
        assert o.met_slo is True
    s = summarize(result)
    assert s["slo_attainment"] == 1.0 and s["rejection_rate"] == 0.0
    assert result.itl.total > 0
    assert result.engines.prefix_queries > 0  # read from the server's /metrics


async def test_rejections_and_errors_are_counted_not_hidden() -> None:
    async def models(_: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": "m"}]})

    async def completions(request: web.Request) -> web.Response:
        rid = request.headers["X-Request-Id"]
        if int(rid[1:]) % 2:
            return web.json_response({"error": {"message": "queue full"}}, status=429)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b'data: {"error": {"message": "engine died"}}\n\ndata: [DONE]\n\n')
        return resp

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/completions", completions)
    async with TestServer(app, host="127.0.0.1", port=0) as server:
        result = await run_live(str(server.make_url("")), requests(seconds=0.2))
    statuses = {o.status for o in result.outcomes}
    assert statuses == {"rejected", "failed"}
    assert all(o.met_slo is False for o in result.outcomes)
    assert any("engine died" in (o.reason or "") for o in result.outcomes)
    assert summarize(result)["rejection_rate"] > 0.3


def test_live_workload_by_scenario_or_trace_path(tmp_path) -> None:
    name, wl = live_workload("priorities", 0, 8192, None)
    assert name == "priorities" and wl.requests(2)
    trace = tmp_path / "t.csv"
    trace.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:15:46.6805900,100,10\n2023-11-16 18:15:47.0,200,20\n"
    )
    name, wl = live_workload(str(trace), 0, 8192, None)
    assert name == "t" and len(wl.requests(10)) == 2
    with pytest.raises(ValueError, match="valid"):
        live_workload("nope", 0, 8192, None)

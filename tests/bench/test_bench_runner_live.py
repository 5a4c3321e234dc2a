"""The live runner against an in-process simulated vLLM server (loopback, port 0)."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from vllm_control_plane.bench.report import run_table, summarize
from vllm_control_plane.bench.runner_live import (
    LiveOptions,
    assign_tenants,
    fit_to_context,
    live_workload,
    run_live,
)
from vllm_control_plane.bench.workloads import (
    BenchRequest,
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
    _, fast = live_workload(str(trace), 0, 8192, None, speedup=2.0, limit=1)
    assert len(fast.requests(10)) == 1 and fast.speedup == 2.0
    with pytest.raises(ValueError, match="valid"):
        live_workload("nope", 0, 8192, None)
    with pytest.raises(ValueError, match="trace replays"):
        live_workload("priorities", 0, 8192, None, sample=0.5)


def write_mooncake(path, n: int = 12) -> None:
    """Prompts of 1.5K+ tokens sharing a first block: longer than a 1K context."""
    rows = (
        {"timestamp": 20 * i, "input_length": 1500 + 10 * i, "output_length": 40 + i,
         "hash_ids": [0, i + 1, i + 2]}
        for i in range(n)
    )  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


async def test_trace_prompts_clipped_to_the_context_are_accepted_live(tmp_path) -> None:
    """The server adds a BOS token: prompt + output clipped to exactly the context is refused
    (HTTP 400), so a live replay keeps headroom and every request completes."""
    trace = tmp_path / "long.jsonl"
    write_mooncake(trace)
    context = 1024
    spec = EngineSpec(model="llama-3-8b", max_model_len=context, seed=1)
    _, exact = live_workload(str(trace), 0, context, None, reserve_tokens=0)
    _, live = live_workload(str(trace), 0, context, None)  # LIVE_RESERVE_TOKENS
    exact_reqs, reqs = exact.requests(10), live.requests(10)
    assert all(r.prompt_tokens + r.output_tokens == context for r in exact_reqs)
    assert all(r.prompt_tokens + r.output_tokens + 1 <= context for r in reqs)  # + BOS
    async with SimServer(spec, time_scale=FAST) as srv:
        refused = await run_live(srv.url, exact_reqs[:2], LiveOptions(timeout_s=30))
        result = await run_live(srv.url, reqs, LiveOptions(timeout_s=30))
    assert all(o.status == "failed" and "HTTP 400" in (o.reason or "") for o in refused.outcomes)
    assert len(result.outcomes) == 12
    for o, req in zip(result.outcomes, reqs, strict=True):
        assert o.status == "completed", o.reason
        assert o.output_tokens == req.output_tokens
    assert summarize(result)["rejection_rate"] == 0.0


async def test_outputs_over_the_context_are_capped_so_the_server_accepts_them() -> None:
    """A synthetic workload can ask for more output than the server's context leaves (the
    virtual engine trims it; a live server refuses it with a 400): the live runner caps it."""
    cls = RequestClass("long", e2e_slo_ms=60_000)
    reqs = [BenchRequest("fits", 0.0, ((1, 100),), 50, cls),
            BenchRequest("over", 0.0, ((2, 900),), 400, cls),
            BenchRequest("prompt-alone-too-long", 0.0, ((3, 1100),), 5, cls)]  # fmt: skip
    capped = {r.request_id: r for r in fit_to_context(reqs, 1024, reserve_tokens=16)}
    assert capped["fits"].output_tokens == 50  # untouched
    assert capped["over"].output_tokens == 1024 - 16 - 900
    assert capped["prompt-alone-too-long"].output_tokens == 5  # left for the server to refuse
    spec = EngineSpec(model="llama-3-8b", max_model_len=1024, seed=1)
    async with SimServer(spec, time_scale=FAST) as srv:
        raw = await run_live(srv.url, reqs[1:2], LiveOptions(timeout_s=30))
        fitted = await run_live(srv.url, list(capped.values()), LiveOptions(timeout_s=30))
    assert raw.outcomes[0].status == "failed" and "HTTP 400" in (raw.outcomes[0].reason or "")
    got = {o.request_id: o for o in fitted.outcomes}
    assert got["fits"].status == got["over"].status == "completed"
    assert got["over"].output_tokens == 1024 - 16 - 900
    assert got["prompt-alone-too-long"].status == "failed"


def sse(*frames: dict) -> bytes:
    return b"".join(b"data: " + json.dumps(f).encode() + b"\n\n" for f in frames) + (
        b"data: [DONE]\n\n"
    )


def fake_server(completions) -> TestServer:
    async def models(_: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": "m"}]})

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/completions", completions)
    return TestServer(app, host="127.0.0.1", port=0)


def one_request(cls: RequestClass, output: int = 6, n: int = 1) -> list[BenchRequest]:
    return [BenchRequest(f"r{i}", 0.0, ((i + 1, 20),), output, cls) for i in range(n)]


async def test_tpot_without_usage_is_counted_from_chunks() -> None:
    """A server that sends no usage: tokens are the chunks with text, so a slow stream misses
    its TPOT SLO instead of passing it unjudged."""

    async def completions(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for k in range(5):
            frame = {"choices": [{"index": 0, "text": f" w{k}"}]}
            await resp.write(b"data: " + json.dumps(frame).encode() + b"\n\n")
            await asyncio.sleep(0.03)
        await resp.write(b"data: [DONE]\n\n")
        return resp

    cls = RequestClass("c", ttft_slo_ms=5000, tpot_slo_ms=10)
    async with fake_server(completions) as server:
        result = await run_live(str(server.make_url("")), one_request(cls, output=5))
    (o,) = result.outcomes
    assert o.status == "completed" and o.output_tokens == 5
    assert o.tpot is not None and o.tpot >= 0.02  # four gaps of ~30 ms
    assert o.met_slo is False
    assert any("counted from chunks" in n for n in result.notes)


async def test_refusals_deadlines_and_failures_are_classified_like_the_core() -> None:
    answers = {
        "r0": (429, "queue_full"),
        "r1": (504, "deadline_infeasible"),
        "r2": (503, "no_healthy_instance"),
        "r3": (504, "deadline_exceeded"),
        "r4": (500, "engine_error"),
        "r5": (502, None),
    }

    async def completions(request: web.Request) -> web.StreamResponse:
        rid = request.headers["X-Request-Id"]
        if rid in answers:
            status, code = answers[rid]
            return web.json_response({"error": {"message": "no", "code": code}}, status=status)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        code = "deadline_exceeded" if rid == "r6" else "engine_error"
        await resp.write(
            sse(
                {"choices": [{"index": 0, "text": " a"}]}, {"error": {"message": "x", "code": code}}
            )
        )
        return resp

    cls = RequestClass("c", ttft_slo_ms=5000)
    async with fake_server(completions) as server:
        result = await run_live(str(server.make_url("")), one_request(cls, n=8))
    statuses = [o.status for o in result.outcomes]
    assert statuses == [
        "rejected", "rejected", "rejected", "timeout", "failed", "failed", "timeout", "failed"
    ]  # fmt: skip
    assert all(o.met_slo is False for o in result.outcomes)
    s = summarize(result)
    assert s["rejection_rate"] == pytest.approx(5 / 8)  # rejected + timed out: refused work
    assert result.counters["timeout"] == 2
    assert s["usd_per_1k_completed"] is None


async def test_cost_is_unknown_without_a_price() -> None:
    reqs = requests(seconds=0.2)
    async with SimServer(EngineSpec(model="llama-3-8b", seed=1), time_scale=FAST) as srv:
        free = await run_live(srv.url, reqs, LiveOptions(timeout_s=30))
        priced = await run_live(srv.url, reqs, LiveOptions(timeout_s=30, usd_per_hour=3.0))
    s = summarize(free)
    assert s["usd_per_1k_slo_met"] is None and s["fleet_usd"] is None
    row = run_table([s]).splitlines()[2]
    assert row.endswith("| – |") and "0.000" not in row
    assert summarize(priced)["usd_per_1k_slo_met"] > 0


async def test_tenant_keys_are_sent_per_class_and_attainment_is_per_tenant() -> None:
    seen: dict[str, str] = {}

    async def completions(request: web.Request) -> web.StreamResponse:
        key = request.headers.get("Authorization", "")
        seen[request.headers["X-Request-Id"]] = key
        if key == "Bearer kb":  # tenant b is over its limit
            return web.json_response({"error": {"code": "rate_limited"}}, status=429)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        usage = {"prompt_tokens": 20, "completion_tokens": 1, "total_tokens": 21}
        text = {"choices": [{"index": 0, "text": " a"}]}
        await resp.write(sse(text, {"choices": [], "usage": usage}))
        return resp

    a = RequestClass("alpha", ttft_slo_ms=5000, tenant="a")
    b = RequestClass("bravo", ttft_slo_ms=5000)  # no tenant: becomes tenant "bravo"
    c = RequestClass("other", ttft_slo_ms=5000)
    reqs = [
        BenchRequest("r0", 0.0, ((1, 20),), 1, a),
        BenchRequest("r1", 0.0, ((2, 20),), 1, b),
        BenchRequest("r2", 0.0, ((3, 20),), 1, c),
    ]
    keys = {"a": "ka", "bravo": "kb"}
    tagged = assign_tenants(reqs, list(keys))
    assert [r.cls.tenant for r in tagged] == ["a", "bravo", None]
    with pytest.raises(ValueError, match="tenants: a"):
        assign_tenants(reqs, ["nobody"])
    opts = LiveOptions(api_key="k0", tenant_keys=keys)
    async with fake_server(completions) as server:
        result = await run_live(str(server.make_url("")), tagged, opts)
    assert seen == {"r0": "Bearer ka", "r1": "Bearer kb", "r2": "Bearer k0"}
    s = summarize(result)
    assert s["attainment_by_tenant"] == {"a": 1.0, "bravo": 0.0}
    md = run_table([s])
    assert "SLO met per tenant:\n\n| config | a | bravo |" in md
    assert md.endswith("| 100.0% | 0.0% |")

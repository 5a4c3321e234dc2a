"""``/metrics`` parsed with prometheus_client: vLLM names, labels, buckets, consistent values."""

from __future__ import annotations

import asyncio

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from vllm_control_plane import tokenizer
from vllm_control_plane.sim.launcher import SimServer
from vllm_control_plane.sim.types import EngineSpec

LABELS = {"model_name": "llama-3-8b", "engine": "0"}

# vLLM v1's bucket boundaries, copied from vllm/v1/metrics/loggers.py (PrometheusStatLogger:
# histogram_time_to_first_token, histogram_inter_token_latency, request_latency_buckets) rather
# than imported from sim/metrics.py, so a wrong constant there fails this test.
VLLM_TTFT_BUCKETS = [
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
]  # fmt: skip
VLLM_ITL_BUCKETS = [
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
]  # fmt: skip
VLLM_REQUEST_LATENCY_BUCKETS = [
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
    240.0, 480.0, 960.0, 1920.0, 7680.0,
]  # fmt: skip


async def _scrape(srv: SimServer) -> dict[str, dict]:
    """name -> {"type": ..., "samples": {(sample_name, frozenset(labels)): value}}."""
    async with aiohttp.ClientSession() as s, s.get(srv.url + "/metrics") as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
        text = await r.text()
    out: dict[str, dict] = {}
    for fam in text_string_to_metric_families(text):
        samples = {(x.name, frozenset(x.labels.items())): x.value for x in fam.samples}
        out[fam.name] = {"type": fam.type, "samples": samples}
    return out


def _value(m: dict, family: str, sample: str | None = None, **labels: str) -> float:
    key = (sample or family, frozenset({**LABELS, **labels}.items()))
    return m[family]["samples"][key]


def _buckets(m: dict, family: str) -> list[float]:
    return sorted(
        float(dict(lbl)["le"])
        for (name, lbl) in m[family]["samples"]
        if name.endswith("_bucket") and dict(lbl)["le"] != "+Inf"
    )


async def _run_requests(srv: SimServer, lengths: list[int]) -> None:
    async with aiohttp.ClientSession() as s:

        async def one(i: int, n: int) -> None:
            body = {"prompt": f"request number {i}", "max_tokens": n, "ignore_eos": True,
                    "stream": i % 2 == 0}  # fmt: skip
            async with s.post(srv.url + "/v1/completions", json=body) as r:
                assert r.status == 200
                await r.read()

        await asyncio.gather(*(one(i, n) for i, n in enumerate(lengths)))


async def test_metrics_match_requests(sim_server: SimServer) -> None:
    lengths = [5, 9, 14, 3]
    await _run_requests(sim_server, lengths)
    m = await _scrape(sim_server)
    prompts = sum(tokenizer.count_tokens(f"request number {i}", add_bos=True) for i in range(4))
    assert _value(m, "vllm:generation_tokens", "vllm:generation_tokens_total") == sum(lengths)
    assert _value(m, "vllm:prompt_tokens", "vllm:prompt_tokens_total") == prompts
    assert _value(m, "vllm:request_success", "vllm:request_success_total",
                  finished_reason="length") == 4  # fmt: skip
    assert _value(m, "vllm:request_success", "vllm:request_success_total",
                  finished_reason="abort") == 0  # fmt: skip
    assert _value(m, "vllm:num_requests_running") == 0 == _value(m, "vllm:num_requests_waiting")
    assert _value(m, "vllm:kv_cache_usage_perc") == 0.0
    assert _value(m, "vllm:prefix_cache_queries", "vllm:prefix_cache_queries_total") > 0
    assert "vllm:prefix_cache_hits" in m and "vllm:num_preemptions" in m
    count = "_count"
    assert _value(m, "vllm:time_to_first_token_seconds",
                  "vllm:time_to_first_token_seconds" + count) == 4  # fmt: skip
    assert _value(m, "vllm:e2e_request_latency_seconds",
                  "vllm:e2e_request_latency_seconds" + count) == 4  # fmt: skip
    assert _value(m, "vllm:request_queue_time_seconds",
                  "vllm:request_queue_time_seconds" + count) == 4  # fmt: skip
    assert _value(
        m, "vllm:inter_token_latency_seconds", "vllm:inter_token_latency_seconds" + count
    ) == sum(n - 1 for n in lengths)
    # Latencies are in model seconds (a ~7 ms step per token on an H100), not the 50x faster
    # wall time this test ran at.
    e2e = _value(m, "vllm:e2e_request_latency_seconds", "vllm:e2e_request_latency_seconds_sum")
    assert 0.005 * sum(lengths) < e2e < 0.1 * sum(lengths)


async def test_vllm_buckets_and_types(sim_server: SimServer) -> None:
    m = await _scrape(sim_server)
    assert _buckets(m, "vllm:time_to_first_token_seconds") == VLLM_TTFT_BUCKETS
    assert _buckets(m, "vllm:inter_token_latency_seconds") == VLLM_ITL_BUCKETS
    assert _buckets(m, "vllm:e2e_request_latency_seconds") == VLLM_REQUEST_LATENCY_BUCKETS
    assert _buckets(m, "vllm:request_queue_time_seconds") == VLLM_REQUEST_LATENCY_BUCKETS
    # vLLM gives its phase histograms the request-latency buckets too.
    for phase in ("inference", "prefill", "decode"):
        family = f"vllm:request_{phase}_time_seconds"
        assert _buckets(m, family) == VLLM_REQUEST_LATENCY_BUCKETS, family
    assert m["vllm:num_requests_running"]["type"] == "gauge"
    assert m["vllm:prompt_tokens"]["type"] == "counter"
    assert m["vllm:e2e_request_latency_seconds"]["type"] == "histogram"
    assert "vllm:gpu_cache_usage_perc" not in m


async def test_legacy_metric_names(sim_spec: EngineSpec) -> None:
    async with SimServer(sim_spec, time_scale=0.02, legacy_metrics=True) as srv:
        await _run_requests(srv, [4])
        m = await _scrape(srv)
    for name in ("vllm:gpu_cache_usage_perc", "vllm:gpu_prefix_cache_queries",
                 "vllm:gpu_prefix_cache_hits", "vllm:time_per_output_token_seconds"):  # fmt: skip
        assert name in m, name
    for name in ("vllm:kv_cache_usage_perc", "vllm:prefix_cache_queries",
                 "vllm:inter_token_latency_seconds"):  # fmt: skip
        assert name not in m, name
    assert _value(m, "vllm:time_per_output_token_seconds",
                  "vllm:time_per_output_token_seconds_count") == 3  # fmt: skip
    assert _buckets(m, "vllm:time_per_output_token_seconds") == VLLM_ITL_BUCKETS


async def test_servers_in_one_process_do_not_share_series(sim_spec: EngineSpec) -> None:
    async with (
        SimServer(sim_spec, time_scale=0.02) as a,
        SimServer(sim_spec, time_scale=0.02) as b,
    ):
        await _run_requests(a, [3, 3])
        ma, mb = await _scrape(a), await _scrape(b)
    assert _value(ma, "vllm:generation_tokens", "vllm:generation_tokens_total") == 6
    assert _value(mb, "vllm:generation_tokens", "vllm:generation_tokens_total") == 0

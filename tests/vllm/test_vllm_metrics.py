"""The control plane's ``/metrics`` scraping against real vLLM (v1 metric names).

The HTTP backend's parser must find the v1 gauges and counters in a real scrape; the monitor must
carry the engines' live load into the instances' fields while a burst runs (a waiting queue forms
behind ``--max-num-seqs 4``); and the engines' token counters must match the control plane's own
accounting once the burst is over.
"""

from __future__ import annotations

import asyncio

import pytest
from tests.vllm_support import VllmServer
from tests.vllm_support.fleet import (
    EngineCounters,
    control_plane,
    fixed_length,
    instances,
    wait_terminal,
    wait_until,
)

from vllm_control_plane import ControlPlaneManager, OpenAIHTTPBackend, RequestStatus

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(600)]

V1_SCRAPED = {
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
    "vllm:prefix_cache_queries",
    "vllm:prefix_cache_hits",
    "vllm:generation_tokens",
    "vllm:prompt_tokens",
}


async def test_backend_parses_v1_names(live_vllm_servers: list[VllmServer]) -> None:
    backend = OpenAIHTTPBackend()
    await backend.start()
    try:
        samples = [await backend.scrape(inst) for inst in instances(live_vllm_servers)]
    finally:
        await backend.close()
    for sample in samples:
        assert sample is not None
        assert sample.raw.keys() >= V1_SCRAPED, sorted(V1_SCRAPED - sample.raw.keys())
        assert not any(name.startswith("vllm:gpu_") for name in sample.raw)
        assert 0.0 <= sample.kv_cache_usage <= 1.0


class LoadWatcher:
    """Keeps the highest running / waiting / KV usage the control plane has seen per instance."""

    def __init__(self, cp: ControlPlaneManager) -> None:
        self.cp = cp
        self.peak: dict[str, dict[str, float]] = {}

    async def run(self) -> None:
        while True:
            for inst in self.cp.get_instances():
                peak = self.peak.setdefault(inst.instance_id, {})
                for key, value in (
                    ("running", inst.num_requests_running),
                    ("waiting", inst.num_requests_waiting),
                    ("kv", inst.kv_cache_usage),
                ):
                    peak[key] = max(peak.get(key, 0.0), value)
            await asyncio.sleep(0.05)


async def test_monitor_sees_load_and_counters_match(live_vllm_servers: list[VllmServer]) -> None:
    servers = live_vllm_servers
    before = await asyncio.gather(*(EngineCounters.scrape(s) for s in servers))
    # 8 in flight per server against max_num_seqs=4: 4 run, 4 wait in vLLM, for seconds.
    async with control_plane(servers, max_concurrent=8) as cp:
        watcher = LoadWatcher(cp)
        watch = asyncio.create_task(watcher.run())
        ids = [f"load-{i}" for i in range(16)]
        try:
            for rid in ids:
                await cp.submit_request(fixed_length(rid, 600, prompt_tokens=300))
            results = await wait_terminal(cp, ids, timeout_s=400)
        finally:
            watch.cancel()
        assert all(r.status is RequestStatus.COMPLETED for r in results.values())
        for iid, peak in watcher.peak.items():
            assert peak["running"] >= 1 and peak["kv"] > 0, (iid, peak)
        print(f"peaks seen through the monitor: {watcher.peak}")
        assert max(p["waiting"] for p in watcher.peak.values()) >= 1, watcher.peak

        def drained() -> bool:
            return all(
                i.num_requests_running == i.num_requests_waiting == 0 for i in cp.get_instances()
            )

        await wait_until(drained, timeout_s=60, what="scraped load back to zero")
        metrics = cp.get_metrics()
    after = await asyncio.gather(*(EngineCounters.scrape(s) for s in servers))
    deltas = [a - b for a, b in zip(after, before, strict=True)]
    assert sum(d["vllm:generation_tokens_total"] for d in deltas) == metrics.completion_tokens
    assert metrics.completion_tokens == 16 * 600
    assert sum(d["vllm:prompt_tokens_total"] for d in deltas) == metrics.prompt_tokens
    assert sum(d["vllm:request_success_total{length}"] for d in deltas) == 16

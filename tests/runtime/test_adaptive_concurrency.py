"""Adaptive concurrency through the public API: a manager over a simulated vLLM server whose
decode is slower than the interactive requests' TPOT SLO holds batch requests back while
interactive ones still go, and every request still ends COMPLETED."""

from __future__ import annotations

import asyncio

from vllm_control_plane import (
    ControlPlaneManager,
    CoreLimits,
    ExecutionInstance,
    MonitorConfig,
    RequestMetadata,
    RequestPriority,
    RequestStatus,
)
from vllm_control_plane.core.concurrency import AdaptiveConcurrency
from vllm_control_plane.sim.launcher import SimServer
from vllm_control_plane.sim.types import EngineSpec


async def _until_dispatched(cp: ControlPlaneManager, request_id: str) -> None:
    while cp.core.status(request_id) is RequestStatus.QUEUED:  # the dispatch loop's turn
        await asyncio.sleep(0.005)


async def test_breached_tpot_slo_lowers_the_limit_for_batch_requests_only() -> None:
    spec = EngineSpec(model="llama-3-8b", gpu="H100", seed=5)
    limits = CoreLimits(adaptive_concurrency=AdaptiveConcurrency(backoff=0.5, min_limit=1))
    async with SimServer(spec, time_scale=0.05) as srv:
        cp = ControlPlaneManager(
            "priority", "round_robin", limits=limits,
            monitor_config=MonitorConfig(health_interval=0.05, scrape_interval=0.05),
        )  # fmt: skip
        cp.register_instance(ExecutionInstance(
            instance_id="a", host="127.0.0.1", port=srv.port, model_name="llama-3-8b",
            gpu_type="H100", max_concurrent_requests=8,
        ))  # fmt: skip
        await cp.start()
        try:
            # an SLO no engine meets (0.01 ms per token): every interactive completion breaches
            def interactive(i: int) -> RequestMetadata:
                return RequestMetadata(
                    request_id=f"i{i}", prompt="hi", max_tokens=8, ignore_eos=True,
                    tpot_slo_ms=0.01, priority=RequestPriority.HIGH,
                )  # fmt: skip

            for i in range(3):  # one at a time: each is a new generation after the last cut
                await cp.submit_request(interactive(i))
                assert (await cp.get_result(f"i{i}", timeout=10)).status is RequestStatus.COMPLETED
            limit = cp.get_instance_metrics("a")["concurrency_limit"]
            assert limit == 1  # 8 -> 4 -> 2 -> 1
            batch = [
                RequestMetadata(
                    request_id=f"b{k}",
                    prompt="x",
                    max_tokens=2000,
                    ignore_eos=True,
                    priority=RequestPriority.LOW,
                )
                for k in range(3)
            ]
            for r in batch:
                await cp.submit_request(r)
            await asyncio.wait_for(_until_dispatched(cp, "b0"), 10)
            # the batch work is held at the adaptive limit (b0 runs ~1 s: b1, b2 stay queued)
            assert [cp.core.status(r) for r in ("b1", "b2")] == [RequestStatus.QUEUED] * 2
            await cp.submit_request(interactive(9))  # the protected class still goes at once
            assert (await cp.get_result("i9", timeout=10)).status is RequestStatus.COMPLETED
            results = [await cp.get_result(r.request_id, timeout=20) for r in batch]
            assert all(r.status is RequestStatus.COMPLETED for r in results)
        finally:
            await cp.stop()

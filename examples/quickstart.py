#!/usr/bin/env python3
"""The quick-start guide's complete example, run as written.

Needs an engine on localhost:8000 serving llama-3-70b on four H100s (tensor parallel) — for
instance the simulator:

    vcp sim --model llama-3-70b --gpu H100 --tp 4 --port 8000

The instance is registered with ``gpu_type="H100"`` to match: left out, the GPU is inferred
from ``gpu_memory_gb`` (80 GB → H100, right here, wrong for an A100-80G), and the estimator's
prior and the price follow the inferred GPU.

About the SLO: 100 tokens of Llama-3-70B on TP4 H100s take ~1.6 s in real time, so the guide's
1 s deadline is missed and the example prints ``SLO Compliance: 0.00%``. To see compliance, use
a looser deadline (``slo_deadline_ms=3000``) or fewer tokens (``max_tokens=50``), or run the
simulator faster than real time (``--time-scale 0.5``: one model second lasts 0.5 s).

``VCP_HOST`` / ``VCP_PORT`` point it elsewhere (the test suite uses them for free ports).
Everything after the guide's two lines of output is beyond the guide: the other figures of
section 6 and each request's result, which the test suite checks.
"""

import asyncio
import os

from vllm_control_plane import (
    ControlPlaneManager,
    ExecutionInstance,
    RequestMetadata,
    RequestPriority,
)

HOST = os.environ.get("VCP_HOST", "localhost")
PORT = int(os.environ.get("VCP_PORT", "8000"))


async def main():
    # 1. 创建Control Plane
    cp = ControlPlaneManager(
        scheduling_policy="adaptive",
        routing_strategy="load_balanced",
    )

    # 2. 注册实例
    instance = ExecutionInstance(
        instance_id="vllm-1",
        host=HOST,
        port=PORT,
        model_name="llama-3-70b",
        tensor_parallel_size=4,
        gpu_count=4,
        gpu_memory_gb=80.0,
        gpu_type="H100",  # the GPU `vcp sim --gpu H100` models (the guide leaves it out)
        max_concurrent_requests=100,
    )
    cp.register_instance(instance)

    # 3. 启动
    await cp.start()

    # 4. 提交请求
    request_ids = []
    for i in range(5):
        request = RequestMetadata(
            request_id=f"req-{i:03d}",
            user_id=f"user-{i}",
            priority=RequestPriority.NORMAL if i % 2 else RequestPriority.HIGH,
            slo_deadline_ms=1000,
            max_tokens=100,
            model_name="llama-3-70b",
        )
        request_ids.append(await cp.submit_request(request))

    # 5. 监控
    await asyncio.sleep(2)
    metrics = cp.get_metrics()
    print(f"Completed: {metrics.completed_requests}")
    print(f"SLO Compliance: {metrics.slo_compliance_rate:.2%}")

    # Beyond the guide's example: the rest of its section 6, and every request's result.
    print(f"Failed: {metrics.failed_requests}")
    print(f"Avg Latency: {metrics.avg_latency_ms:.2f}ms")
    print(f"P99 Latency: {metrics.p99_latency_ms:.2f}ms")
    print(f"Avg TTFT: {metrics.avg_ttft_ms:.2f}ms")
    print(f"Generated Tokens: {metrics.completion_tokens}")
    status = cp.get_status()
    print(f"Running: {status['running_requests']}")
    print(f"Queued: {status['pending_requests']}")
    for rid in request_ids:
        state = await cp.get_request_status(rid)
        if not state.is_terminal:
            print(f"{rid}: {state.value}")
            continue
        r = await cp.get_result(rid)  # ended: returns at once
        if not r.ok:
            print(f"{rid}: {r.status.value} error={r.error!r}")
            continue
        print(
            f"{rid}: {r.status.value} instance={r.instance_id} prompt_tokens={r.prompt_tokens} "
            f"completion_tokens={r.completion_tokens} latency={r.latency_ms:.2f}ms "
            f"ttft={r.ttft_ms:.2f}ms slo_met={r.slo_met} chars={len(r.text)} "
            f"text={r.text[:24]!r}"
        )

    # 6. 停止
    await cp.stop()


if __name__ == "__main__":
    asyncio.run(main())

#!/usr/bin/env python3
"""The quick-start guide's complete example, run as written.

Needs an engine on localhost:8000 serving llama-3-70b — for instance the simulator:

    vcp sim --model llama-3-70b --gpu H100 --tp 4 --port 8000

``VCP_HOST`` / ``VCP_PORT`` point it elsewhere (the test suite uses them for free ports).
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
        max_concurrent_requests=100,
    )
    cp.register_instance(instance)

    # 3. 启动
    await cp.start()

    # 4. 提交请求
    for i in range(5):
        request = RequestMetadata(
            request_id=f"req-{i:03d}",
            user_id=f"user-{i}",
            priority=RequestPriority.NORMAL if i % 2 else RequestPriority.HIGH,
            slo_deadline_ms=1000,
            max_tokens=100,
            model_name="llama-3-70b",
        )
        await cp.submit_request(request)

    # 5. 监控
    await asyncio.sleep(2)
    metrics = cp.get_metrics()
    print(f"Completed: {metrics.completed_requests}")
    print(f"SLO Compliance: {metrics.slo_compliance_rate:.2%}")

    # 6. 停止
    await cp.stop()


if __name__ == "__main__":
    asyncio.run(main())

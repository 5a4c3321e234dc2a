"""The quick-start guide's flow (docs/quickstart.md) against two real vLLM servers.

Create the control plane, register both servers, start, submit the guide's prompt-less requests,
get results and streams, read metrics and status, switch policy and strategy live, and stop. The
engines' own counters must agree with what the control plane says it generated.
"""

from __future__ import annotations

import asyncio

import pytest
from tests.vllm_support import SERVED_MODEL_NAME, VllmServer
from tests.vllm_support.fleet import PATIENT_MONITOR, EngineCounters, instances, wait_terminal

from vllm_control_plane import (
    ControlPlaneManager,
    RequestMetadata,
    RequestPriority,
    RequestStatus,
)

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(600)]


async def _engine_generation_tokens(servers: list[VllmServer]) -> float:
    counters = await asyncio.gather(*(EngineCounters.scrape(s) for s in servers))
    return sum(c["vllm:generation_tokens_total"] for c in counters)


async def test_quickstart_flow(live_vllm_servers: list[VllmServer]) -> None:
    servers = live_vllm_servers
    generated_before = await _engine_generation_tokens(servers)
    cp = ControlPlaneManager(
        scheduling_policy="adaptive",
        routing_strategy="load_balanced",
        enable_monitoring=True,
        monitor_config=PATIENT_MONITOR,
    )
    for inst in instances(servers, max_concurrent=4):
        cp.register_instance(inst)
    await cp.start()
    try:
        ids = await _guide_requests(cp)
        await _stream_and_chat(cp)
        ids += await _after_live_switch(cp)
        metrics = cp.get_metrics()
        assert metrics.completed_requests == len(ids) + 2
        assert metrics.failed_requests == metrics.rejected_requests == 0
        assert metrics.avg_latency_ms > 0 and metrics.avg_ttft_ms > 0
        status = cp.get_status()
        assert status["running_requests"] == status["pending_requests"] == 0
        assert await cp.get_request_status("req-000") is RequestStatus.COMPLETED
        assert await cp.cancel_request("req-000") is False  # already finished
    finally:
        await cp.stop()
    # The engines generated exactly what the control plane accounted for.
    generated = await _engine_generation_tokens(servers) - generated_before
    assert generated == metrics.completion_tokens


async def _guide_requests(cp: ControlPlaneManager) -> list[str]:
    """The guide's requests: no prompt (a synthetic prompt of ``prompt_tokens`` is sent)."""
    ids = []
    for i in range(6):
        request = RequestMetadata(
            request_id=f"req-{i:03d}",
            user_id=f"user-{i}",
            priority=RequestPriority.NORMAL if i % 2 else RequestPriority.HIGH,
            slo_deadline_ms=120_000,  # generous: timing on shared CPUs is not under test
            max_tokens=24,
            model_name=SERVED_MODEL_NAME,
        )
        ids.append(await cp.submit_request(request))
    results = await wait_terminal(cp, ids, timeout_s=240)
    for result in results.values():
        assert result.status is RequestStatus.COMPLETED, result.error
        assert 1 <= result.completion_tokens <= 24  # the random model may emit EOS early
        assert result.prompt_tokens > 0 and result.ttft_ms is not None
        assert result.instance_id in {"vllm-0", "vllm-1"}
        assert result.slo_met is True
    return ids


async def _stream_and_chat(cp: ControlPlaneManager) -> None:
    streamed = RequestMetadata(
        request_id="stream-1", prompt="Hello", max_tokens=20, temperature=0.0, ignore_eos=True
    )
    chunks = [text async for text in cp.stream(streamed)]
    result = await cp.get_result("stream-1")
    assert result.status is RequestStatus.COMPLETED and result.completion_tokens == 20
    # Frames whose token is an incomplete UTF-8 sequence carry no text, so fewer chunks.
    assert 0 < len(chunks) <= 20 and "".join(chunks) == result.text

    chat = RequestMetadata(
        request_id="chat-1",
        messages=[{"role": "user", "content": "Which server has the shortest queue?"}],
        max_tokens=8,
        temperature=0.0,
        ignore_eos=True,
    )
    await cp.submit_request(chat)
    result = await cp.get_result("chat-1", timeout=240)
    assert result.status is RequestStatus.COMPLETED and result.completion_tokens == 8


async def _after_live_switch(cp: ControlPlaneManager) -> list[str]:
    """Switch policy and strategy live; round robin then alternates between the servers."""
    cp.update_policy("priority")
    cp.router.routing_strategy = "round_robin"
    ids = []
    for i in range(4):  # one at a time, so the alternation is not blurred by concurrency
        rid = await cp.submit_request(
            RequestMetadata(request_id=f"rr-{i}", prompt_tokens=16, max_tokens=4)
        )
        await cp.get_result(rid, timeout=240)
        ids.append(rid)
    results = await wait_terminal(cp, ids, timeout_s=10)
    served_by = [results[rid].instance_id for rid in ids]
    assert sorted(served_by) == ["vllm-0", "vllm-0", "vllm-1", "vllm-1"], served_by
    assert cp.get_status()["scheduling_policy"] == "priority"
    return ids

"""Priority under contention: the control plane's queue, not vLLM's FCFS queue, decides the order.

Each server runs with ``--max-num-seqs 4`` and the control plane sends it at most 2 requests at a
time, so most of a burst waits in the control plane. Sixteen LOW requests are submitted, then
four CRITICAL ones. Under ``priority`` every CRITICAL request must be dispatched before every LOW
request that was still queued when it arrived; under ``fifo`` (the control) the LOW ones keep
their place. Order is read from the control plane's dispatch records, never from timings.
"""

from __future__ import annotations

import pytest
from tests.vllm_support import VllmServer
from tests.vllm_support.fleet import control_plane, fixed_length, wait_terminal

from vllm_control_plane import ControlPlaneManager, RequestPriority, RequestStatus

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(600)]

LOW, URGENT = 16, 4
LOW_PRIO, URGENT_PRIO = RequestPriority.LOW, RequestPriority.CRITICAL


async def _burst(cp: ControlPlaneManager, tag: str) -> tuple[list[str], list[str], set[str]]:
    """Submit LOW then CRITICAL requests; return their ids and the LOW ones queued meanwhile."""
    low = [f"{tag}-low-{i}" for i in range(LOW)]
    urgent = [f"{tag}-urgent-{i}" for i in range(URGENT)]
    for rid in low:
        await cp.submit_request(fixed_length(rid, 48, prompt_tokens=32, priority=LOW_PRIO))
    for rid in urgent:
        await cp.submit_request(fixed_length(rid, 48, prompt_tokens=32, priority=URGENT_PRIO))
    # LOW requests not yet dispatched once the last CRITICAL one was in the queue.
    still_queued = {rid for rid in low if cp.core.record(rid).scheduled_at is None}
    results = await wait_terminal(cp, low + urgent, timeout_s=300)
    assert all(r.status is RequestStatus.COMPLETED for r in results.values()), results
    return low, urgent, still_queued


def _dispatched_at(cp: ControlPlaneManager, rid: str) -> float:
    at = cp.core.record(rid).scheduled_at
    assert at is not None
    return at


async def test_priority_dispatches_critical_first(live_vllm_servers: list[VllmServer]) -> None:
    async with control_plane(
        live_vllm_servers, scheduling_policy="priority", max_concurrent=2
    ) as cp:
        _, urgent, still_queued = await _burst(cp, "prio")
        assert len(still_queued) >= LOW - 4, "the burst should have queued in the control plane"
        last_urgent = max(_dispatched_at(cp, rid) for rid in urgent)
        first_low = min(_dispatched_at(cp, rid) for rid in still_queued)
        assert last_urgent <= first_low
        # The waiting happened in the control plane: CRITICAL requests barely queued there.
        urgent_wait = max(cp.core.record(r).scheduled_at - cp.core.record(r).submitted_at
                          for r in urgent)  # fmt: skip
        low_wait = max(_dispatched_at(cp, r) - cp.core.record(r).submitted_at for r in still_queued)
        assert urgent_wait < low_wait


async def test_fifo_control_keeps_arrival_order(live_vllm_servers: list[VllmServer]) -> None:
    async with control_plane(live_vllm_servers, scheduling_policy="fifo", max_concurrent=2) as cp:
        _, urgent, still_queued = await _burst(cp, "fifo")
        first_urgent = min(_dispatched_at(cp, rid) for rid in urgent)
        assert any(_dispatched_at(cp, rid) < first_urgent for rid in still_queued)

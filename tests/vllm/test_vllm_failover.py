"""A killed vLLM server leaves rotation, the other serves its queue, and it returns when healthy.

Twenty requests go to two servers (at most 2 in flight on each from the control plane). Once the
second server is streaming, its whole process group gets SIGKILL: a crash, not a shutdown. Then:

- the health checks take it out of rotation (``is_healthy`` False);
- everything not yet dispatched, and everything it held without a token yet (retried), is served
  by the first server; only requests it was already streaming may fail, with an error, never a
  silent truncation;
- restarted on the same port, it comes back into rotation and serves again.

The restart also leaves the session's two servers as the other tests expect them.
"""

from __future__ import annotations

import asyncio

import pytest
from tests.vllm_support import VllmServer
from tests.vllm_support.fleet import (
    control_plane,
    fixed_length,
    instance_id,
    kill_server,
    wait_terminal,
    wait_until,
)

from vllm_control_plane import ControlPlaneManager, MonitorConfig, RequestResult, RequestStatus

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]

REQUESTS, PER_INSTANCE = 20, 2
# A dead server refuses connections at once; 2 strikes 0.5 s apart eject it. The long timeout
# keeps the survivor, whose API server may answer late while its engine is busy, in rotation.
MONITOR = MonitorConfig(
    health_interval=0.5,
    scrape_interval=0.5,
    unhealthy_threshold=2,
    healthy_threshold=2,
    health_timeout=15.0,
)


def _healthy(cp: ControlPlaneManager, iid: str) -> bool:
    return next(i for i in cp.get_instances() if i.instance_id == iid).is_healthy


async def test_killed_server_is_ejected_and_its_work_served_elsewhere(
    live_vllm_servers: list[VllmServer],
) -> None:
    survivor, victim = instance_id(0), instance_id(1)
    victim_server = live_vllm_servers[1]
    try:
        async with control_plane(
            live_vllm_servers, max_concurrent=PER_INSTANCE, monitor_config=MONITOR
        ) as cp:
            ids = [f"fo-{i}" for i in range(REQUESTS)]
            for rid in ids:
                await cp.submit_request(fixed_length(rid, 300, prompt_tokens=16))

            def victim_streaming() -> list[str]:
                return [r for r in ids if cp.handle(r).chunks and _on(cp, r) == victim]

            await wait_until(victim_streaming, timeout_s=120, what="the victim to stream")
            kill_server(victim_server)
            killed_at = asyncio.get_running_loop().time()  # the clock the core is fed
            await wait_until(lambda: not _healthy(cp, victim), timeout_s=30, what="ejection")

            results = await wait_terminal(cp, ids, timeout_s=600)
            _check_outcomes(cp, results, ids, survivor, victim, killed_at)

            # Back on the same port: readmitted after healthy_threshold good checks.
            victim_server.restart()
            await wait_until(lambda: _healthy(cp, victim), timeout_s=60, what="readmission")
            await _serves_on_both(cp)
    finally:
        if not victim_server.is_alive():
            victim_server.restart()


def _on(cp: ControlPlaneManager, rid: str) -> str | None:
    return cp.core.record(rid).instance_id


def _check_outcomes(
    cp: ControlPlaneManager,
    results: dict[str, RequestResult],
    ids: list[str],
    survivor: str,
    victim: str,
    killed_at: float,
) -> None:
    by_status: dict[RequestStatus, list[str]] = {}
    for rid in ids:
        by_status.setdefault(results[rid].status, []).append(rid)
    assert set(by_status) <= {RequestStatus.COMPLETED, RequestStatus.FAILED}, by_status
    failed = by_status.get(RequestStatus.FAILED, [])
    retried = [r for r in ids if results[r].retries]
    print(f"failover: {len(failed)} failed mid-stream, {len(retried)} retried, served by: "
          f"{sorted(str(results[r].instance_id) for r in ids)}")  # fmt: skip
    # Only what the victim was already streaming may fail (at most its in-flight share).
    assert len(failed) <= PER_INSTANCE, [results[r] for r in failed]
    for rid in failed:
        assert results[rid].instance_id == victim and results[rid].error, results[rid]
    for rid in by_status[RequestStatus.COMPLETED]:
        rec = cp.core.record(rid)
        if rec.scheduled_at is not None and rec.scheduled_at > killed_at:
            assert results[rid].instance_id == survivor, results[rid]
    completed_on_survivor = [
        r for r in by_status[RequestStatus.COMPLETED] if results[r].instance_id == survivor
    ]
    assert len(completed_on_survivor) >= REQUESTS // 2
    assert cp.get_metrics().completed_requests + len(failed) == REQUESTS


async def _serves_on_both(cp: ControlPlaneManager) -> None:
    served = set()
    for i in range(4):  # round robin alternates once both are in rotation
        rid = await cp.submit_request(fixed_length(f"back-{i}", 4, prompt_tokens=16))
        result = (await wait_terminal(cp, [rid], timeout_s=120))[rid]
        assert result.status is RequestStatus.COMPLETED, result.error
        served.add(result.instance_id)
    assert served == {instance_id(0), instance_id(1)}

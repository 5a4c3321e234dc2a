"""Cancelling requests through the control plane frees the real engine.

Eight long requests (about 1000 tokens each) go to one server with ``--max-num-seqs 4``: four run,
four wait in vLLM's own queue. Once every running one has streamed a token, all eight are
cancelled. The engine must then report nothing running or waiting, and its generation counter
must show the requests were cut short — had the aborts not reached it, they would have run to
their full length (8 × 1000 tokens).
"""

from __future__ import annotations

import pytest
from tests.vllm_support import VllmServer
from tests.vllm_support.fleet import (
    EngineCounters,
    control_plane,
    engine_idle,
    fixed_length,
    wait_until,
)

from vllm_control_plane import RequestStatus

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(600)]

REQUESTS, MAX_TOKENS = 8, 1000  # 16-token prompts: 1016 of the 1024-token context


async def test_cancel_aborts_running_and_waiting_requests(
    live_vllm_servers: list[VllmServer],
) -> None:
    server = live_vllm_servers[0]
    before = await EngineCounters.scrape(server)
    async with control_plane([server], max_concurrent=REQUESTS) as cp:
        ids = [f"long-{i}" for i in range(REQUESTS)]
        for rid in ids:
            await cp.submit_request(fixed_length(rid, MAX_TOKENS, prompt_tokens=16))

        def streaming() -> list[str]:
            return [rid for rid in ids if cp.handle(rid).chunks]

        await wait_until(lambda: len(streaming()) >= 4, timeout_s=120, what="4 streams started")
        for rid in ids:
            assert await cp.cancel_request(rid) is True
        for rid in ids:
            assert await cp.get_request_status(rid) is RequestStatus.CANCELLED
        assert cp.get_metrics().cancelled_requests == REQUESTS
        assert cp.get_instance_metrics("vllm-0")["active_requests"] == 0

    await wait_until(lambda: engine_idle(server), timeout_s=120, what="the engine to go idle")
    generated = (await EngineCounters.scrape(server) - before)["vllm:generation_tokens_total"]
    # Uncancelled, the first four alone would generate 4000 tokens and the rest 4000 more.
    assert generated < REQUESTS * MAX_TOKENS / 2, generated

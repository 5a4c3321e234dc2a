"""Cancelling requests through the control plane frees the real engine.

Eight long requests (1000 tokens each) go to one server with ``--max-num-seqs 4``: four run,
four wait in vLLM's own queue. Once four live requests have streamed a token, all are cancelled.
The engine must then report nothing running or waiting, and its generation counter must show
that the cancelled requests were cut short: had the aborts not reached it, each would have run to
its full 1000 tokens.
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

# On 2 shared cores the real vLLM API server is starved while its engine busy-waits, so an abort
# can land only after the request finished (docs/real-vllm.md). The same behaviour is asserted
# against `vcp sim` in tests/gateway and tests/runtime, where it is deterministic.
STARVED_ABORT = "abort may land after the request finished on a starved 2-core machine"

REQUESTS, MAX_TOKENS = 8, 1000  # 16-token prompts: 1016 of the 1024-token context


@pytest.mark.xfail(
    strict=False,
    reason=STARVED_ABORT,
)
async def test_cancel_aborts_running_and_waiting_requests(
    live_vllm_servers: list[VllmServer],
) -> None:
    server = live_vllm_servers[0]
    before = await EngineCounters.scrape(server)
    async with control_plane([server], max_concurrent=REQUESTS) as cp:
        ids = [f"long-{i}" for i in range(REQUESTS)]
        for rid in ids:
            await cp.submit_request(fixed_length(rid, MAX_TOKENS, prompt_tokens=16))

        def live_streaming() -> list[str]:
            return [r for r in ids if cp.handle(r).chunks and not cp.core.status(r).is_terminal]

        await wait_until(lambda: len(live_streaming()) >= 4, timeout_s=120, what="4 live streams")
        cancelled = [rid for rid in ids if await cp.cancel_request(rid)]
        # A starved API server may show the first wave's tokens only as it ends: those four then
        # complete before the cancel, and the second wave is the one cut short.
        finished = [await cp.get_result(rid) for rid in ids if rid not in cancelled]
        assert all(r.completion_tokens == MAX_TOKENS for r in finished), finished
        assert len(cancelled) >= 4
        for rid in cancelled:
            assert await cp.get_request_status(rid) is RequestStatus.CANCELLED
        assert cp.get_metrics().cancelled_requests == len(cancelled)
        assert cp.get_instance_metrics("vllm-0")["active_requests"] == 0

    await wait_until(lambda: engine_idle(server), timeout_s=120, what="the engine to go idle")
    generated = (await EngineCounters.scrape(server) - before)["vllm:generation_tokens_total"]
    for_cancelled = generated - MAX_TOKENS * len(finished)
    print(f"cancel: {len(finished)} done first, {len(cancelled)} cut at {for_cancelled:.0f} tokens")
    # Had the aborts not reached the engine, they would have generated 1000 tokens each.
    assert for_cancelled < len(cancelled) * MAX_TOKENS / 2, (generated, len(finished))

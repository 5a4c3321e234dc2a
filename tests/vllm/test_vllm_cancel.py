"""Cancelling requests through the control plane frees the real engine.

Eight requests go to one server with ``--max-num-seqs 4``: four run, four wait in vLLM's own
queue. Each asks for 1000 tokens of a 16-token prompt with EOS ignored, 1016 of the 1024-token
context, so none can end early, and a run of 1000 decode steps takes seconds. As soon as each
running request has streamed a token (an event, not a sleep), all eight are cancelled. The engine
must then report nothing running or waiting (``/metrics`` polled with a generous bound), and its
step counter must show the requests were cut short: had the aborts not reached the engine core,
it would have run 1000 steps for the first four and 1000 more for the others.
"""

from __future__ import annotations

import pytest
from tests.vllm_support import VllmServer
from tests.vllm_support.fleet import (
    ENGINE_STEPS,
    EngineCounters,
    control_plane,
    engine_idle,
    fixed_length,
    wait_until,
)

from vllm_control_plane import RequestStatus

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(600)]

REQUESTS, MAX_TOKENS, PROMPT_TOKENS = 8, 1000, 16
RUNNING = 4  # the suite's --max-num-seqs: the rest wait in vLLM's queue


async def test_cancel_aborts_running_and_waiting_requests(
    live_vllm_servers: list[VllmServer],
) -> None:
    server = live_vllm_servers[0]
    before = await EngineCounters.scrape(server)
    ids = [f"long-{i}" for i in range(REQUESTS)]
    async with control_plane([server], max_concurrent=REQUESTS) as cp:
        for rid in ids:
            await cp.submit_request(fixed_length(rid, MAX_TOKENS, prompt_tokens=PROMPT_TOKENS))

        def streaming() -> int:
            return sum(bool(cp.handle(rid).chunks) for rid in ids)

        await wait_until(lambda: streaming() >= RUNNING, timeout_s=120, what="4 streams")
        cancelled = [rid for rid in ids if await cp.cancel_request(rid)]
        assert cancelled == ids  # none had finished: each is seconds of decoding
        for rid in ids:
            assert await cp.get_request_status(rid) is RequestStatus.CANCELLED
        assert cp.get_metrics().cancelled_requests == REQUESTS
        assert cp.get_instance_metrics("vllm-0")["active_requests"] == 0

    await wait_until(lambda: engine_idle(server), timeout_s=120, what="the engine to go idle")
    delta = await EngineCounters.scrape(server) - before
    steps, generated = delta[ENGINE_STEPS], delta["vllm:generation_tokens_total"]
    print(f"cancel: {REQUESTS} requests cut after {steps:.0f} engine steps, {generated:.0f} tokens")
    assert generated >= RUNNING  # the engine did run them (each streamed a token)
    # The aborts reached the engine core before the running four got half way, so before the
    # waiting four could take their places.
    assert steps < MAX_TOKENS / 2, delta

"""Prefix-locality routing raises the engines' own prefix-cache hit counters.

Three long shared prefixes (about 550 tokens each: vLLM's CPU KV blocks hold 128 tokens, so only
full 128-token blocks can hit), four rounds of one request per prefix, each with its own short
question. Under ``locality`` each prefix stays on the server that first computed it, so every
request after the first of its prefix reuses the prefix's full blocks. Under ``round_robin`` (the
control, on fresh prefixes) a prefix alternates between the servers and has to be computed on
both, so the engines count fewer hits. Hits are read from vLLM's ``/metrics``.
"""

from __future__ import annotations

import asyncio
import random

import aiohttp
import pytest
from tests.vllm_support import SERVED_MODEL_NAME, VllmServer
from tests.vllm_support.fleet import EngineCounters, control_plane, wait_terminal

from vllm_control_plane import ControlPlaneManager, RequestMetadata, RequestStatus

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(600)]

PREFIXES, ROUNDS, PREFIX_WORDS, BLOCK = 3, 4, 520, 128
WORDS = [
    "server",
    "request",
    "token",
    "queue",
    "model",
    "cache",
    "prefix",
    "block",
    "batch",
    "decode",
    "prefill",
    "latency",
    "fleet",
    "router",
    "policy",
    "weight",
    "priority",
    "deadline",
    "budget",
    "step",
    "engine",
    "memory",
    "prompt",
    "output",
    "user",
    "system",
    "answer",
    "question",
    "time",
    "first",
    "last",
    "next",
    "number",
    "fast",
    "slow",
    "small",
    "large",
    "short",
    "long",
]


def prefixes(seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(PREFIX_WORDS)) for _ in range(PREFIXES)]


async def token_count(server: VllmServer, text: str) -> int:
    body = {"model": SERVED_MODEL_NAME, "prompt": text}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{server.base_url}/tokenize", json=body) as resp,
    ):
        return int((await resp.json())["count"])


async def run_rounds(cp: ControlPlaneManager, texts: list[str], tag: str) -> dict[int, set[str]]:
    """ROUNDS rounds of one request per prefix; returns prefix index → instances that served it."""
    served: dict[int, set[str]] = {p: set() for p in range(len(texts))}
    for r in range(ROUNDS):
        ids = []
        for p, text in enumerate(texts):
            rid = f"{tag}-{r}-{p}"
            prompt = f"{text} question {r} about {WORDS[r]} and {WORDS[p]}:"
            request = RequestMetadata(request_id=rid, prompt=prompt, max_tokens=2, temperature=0.0)
            ids.append(await cp.submit_request(request))
        results = await wait_terminal(cp, ids, timeout_s=240)
        for p, rid in enumerate(ids):
            assert results[rid].status is RequestStatus.COMPLETED, results[rid].error
            served[p].add(str(results[rid].instance_id))
    return served


async def prefix_hits(servers: list[VllmServer], texts: list[str], strategy: str, tag: str):
    before = await asyncio.gather(*(EngineCounters.scrape(s) for s in servers))
    async with control_plane(servers, routing_strategy=strategy) as cp:
        served = await run_rounds(cp, texts, tag)
    after = await asyncio.gather(*(EngineCounters.scrape(s) for s in servers))
    hits = sum((a - b)["vllm:prefix_cache_hits_total"] for a, b in zip(after, before, strict=True))
    return hits, served


async def test_locality_reuses_engine_prefix_cache(live_vllm_servers: list[VllmServer]) -> None:
    servers = live_vllm_servers
    local_texts, rr_texts = prefixes(seed=1), prefixes(seed=2)
    # Full blocks a repeat can reuse: the prefix's tokens (BOS included), less a possible merge
    # of its last token with the question's first.
    counts = [await token_count(servers[0], t) for t in local_texts]
    assert min(counts) >= 3 * BLOCK, counts
    reusable = sum((n - 1) // BLOCK * BLOCK for n in counts)

    local_hits, served = await prefix_hits(servers, local_texts, "locality", "loc")
    assert all(len(where) == 1 for where in served.values()), served
    assert local_hits >= (ROUNDS - 1) * reusable, (local_hits, reusable)

    rr_hits, rr_served = await prefix_hits(servers, rr_texts, "round_robin", "rr")
    assert any(len(where) == 2 for where in rr_served.values()), rr_served
    print(f"prefix-cache hits: locality {local_hits:.0f}, round robin {rr_hits:.0f} tokens")
    assert rr_hits < local_hits, (rr_hits, local_hits)

"""A closed-loop streaming workload, run the same way against real vLLM and against ``vcp sim``.

How it works: ``run_point`` keeps ``concurrency`` streamed completions in flight (each worker sends
its next request when its previous one ends) until ``requests`` have been sent. Prompts are fresh
random token ids of the exact length asked for, so no request hits the prefix cache and both
servers see the same lengths; ``ignore_eos`` fixes the output length; ``ramp_s`` spreads the
clients' first requests, so they do not run in lockstep waves. Per request the client
records TTFT (send → first frame with a choice), E2E (send → end of stream) and the generated
token count from the usage frame (frames may carry several tokens under load). The server's own
TTFT and inter-token-latency histograms are read from ``/metrics`` before and after the point, so
front-end effects can be told apart from the engine's.
"""

from __future__ import annotations

import asyncio
import math
import random
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families

FIRST_ORDINARY_TOKEN = 5  # the tiny model's ids 0-4 are special tokens


@dataclass(frozen=True)
class WorkloadPoint:
    """One measurement point: prompt length, clients in flight, how many requests in all."""

    prompt_tokens: int
    concurrency: int
    requests: int
    max_tokens: int = 128
    ramp_s: float = 0.0  # client i starts i·ramp_s/concurrency after the first: no lockstep

    @property
    def label(self) -> str:
        return f"prompt {self.prompt_tokens}, concurrency {self.concurrency}"


@dataclass(frozen=True)
class RequestTiming:
    ttft_s: float
    e2e_s: float
    tokens: int

    @property
    def tpot_s(self) -> float | None:
        """(E2E − TTFT) / (tokens − 1), as DESIGN §7 defines it; None for one-token outputs."""
        return (self.e2e_s - self.ttft_s) / (self.tokens - 1) if self.tokens > 1 else None


@dataclass
class PointResult:
    """What one point measured, client side and server side."""

    point: WorkloadPoint
    timings: list[RequestTiming] = field(default_factory=list)
    wall_s: float = 0.0
    server_ttft_ms: float = float("nan")  # mean of the server's TTFT histogram over the point
    server_itl_ms: float = float("nan")  # mean of the server's inter-token latency histogram
    # vLLM only (the simulator has no such histograms): time in the engine's queue and from
    # scheduling to the first token. Their sum is the engine's share of the TTFT; the rest of
    # the server's TTFT is the front end (API server → engine core).
    server_queue_ms: float = float("nan")
    server_prefill_ms: float = float("nan")

    @property
    def engine_ttft_ms(self) -> float:
        """TTFT inside the engine: queue + prefill on vLLM; the whole TTFT on the simulator,
        whose HTTP layer hands a request to its engine on arrival."""
        if math.isnan(self.server_prefill_ms):
            return self.server_ttft_ms
        return self.server_queue_ms + self.server_prefill_ms

    def summary(self) -> dict[str, Any]:
        ttft = [t.ttft_s * 1e3 for t in self.timings]
        tpot = [t.tpot_s * 1e3 for t in self.timings if t.tpot_s is not None]
        tokens = sum(t.tokens for t in self.timings)
        return {
            "prompt_tokens": self.point.prompt_tokens,
            "concurrency": self.point.concurrency,
            "requests": len(self.timings),
            "ttft_ms_mean": statistics.fmean(ttft),
            "ttft_ms_p50": statistics.median(ttft),
            "tpot_ms_mean": statistics.fmean(tpot),
            "tpot_ms_p50": statistics.median(tpot),
            "throughput_tok_s": tokens / self.wall_s,
            "server_ttft_ms_mean": self.server_ttft_ms,
            "server_itl_ms_mean": self.server_itl_ms,
            "engine_ttft_ms_mean": self.engine_ttft_ms,
            "server_queue_ms_mean": self.server_queue_ms,
            "server_prefill_ms_mean": self.server_prefill_ms,
            "wall_s": self.wall_s,
        }


def random_prompt(rng: random.Random, length: int, vocab: int) -> list[int]:
    return [rng.randrange(FIRST_ORDINARY_TOKEN, vocab) for _ in range(length)]


async def scrape(session: aiohttp.ClientSession, base_url: str) -> dict[str, float]:
    """Every sample of ``/metrics``, summed over label sets."""
    async with session.get(f"{base_url}/metrics") as resp:
        text = await resp.text()
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[sample.name] = values.get(sample.name, 0.0) + sample.value
    return values


def histogram_mean_ms(before: dict[str, float], after: dict[str, float], name: str) -> float:
    """Mean of the observations a histogram got between two scrapes, in ms (nan if none)."""
    count = after.get(f"{name}_count", 0.0) - before.get(f"{name}_count", 0.0)
    total = after.get(f"{name}_sum", 0.0) - before.get(f"{name}_sum", 0.0)
    return 1e3 * total / count if count else float("nan")


async def stream_completion(
    session: aiohttp.ClientSession,
    base_url: str,
    model: str,
    prompt: list[int],
    max_tokens: int,
) -> RequestTiming:
    """One streamed completion; raises on a non-200 answer or a stream without usage."""
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    sent = time.perf_counter()
    first: float | None = None
    tokens: int | None = None
    url, headers = f"{base_url}/v1/completions", {"Content-Type": "application/json"}
    async with session.post(url, data=orjson.dumps(body), headers=headers) as resp:
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {(await resp.text())[:300]}")
        async for line in resp.content:
            if not line.startswith(b"data: {"):
                continue
            frame = orjson.loads(line[6:])
            if frame.get("choices") and first is None:
                first = time.perf_counter()
            if frame.get("usage") and not frame.get("choices"):
                tokens = frame["usage"]["completion_tokens"]
    end = time.perf_counter()
    if first is None or tokens is None:
        raise RuntimeError("stream ended without a token or without a usage frame")
    return RequestTiming(first - sent, end - sent, tokens)


async def run_point(
    session: aiohttp.ClientSession,
    base_url: str,
    model: str,
    point: WorkloadPoint,
    rng: random.Random,
    vocab: int,
) -> PointResult:
    """Run one closed-loop point and return its timings (server histograms included)."""
    prompts = [random_prompt(rng, point.prompt_tokens, vocab) for _ in range(point.requests)]
    result = PointResult(point)
    before = await scrape(session, base_url)

    async def worker(i: int) -> None:
        await asyncio.sleep(i * point.ramp_s / point.concurrency)
        while prompts:
            prompt = prompts.pop()
            timing = await stream_completion(session, base_url, model, prompt, point.max_tokens)
            result.timings.append(timing)

    started = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(point.concurrency)))
    result.wall_s = time.perf_counter() - started
    after = await scrape(session, base_url)
    result.server_ttft_ms = histogram_mean_ms(before, after, "vllm:time_to_first_token_seconds")
    result.server_itl_ms = histogram_mean_ms(before, after, "vllm:inter_token_latency_seconds")
    result.server_queue_ms = histogram_mean_ms(before, after, "vllm:request_queue_time_seconds")
    result.server_prefill_ms = histogram_mean_ms(before, after, "vllm:request_prefill_time_seconds")
    return result

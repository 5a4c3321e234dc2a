"""Measure real vLLM (CPU build, tiny random Llama) step times, to calibrate the simulator.

How it works: one real server is started from the separate vLLM venv (scripts/setup_vllm_env.sh),
on the seeded tiny model, with max_num_seqs=32. Every prompt is a fresh random list of token ids of
the exact length wanted, so no request hits the prefix cache. Two measurements:

- TTFT: one streamed completion at a time (max_tokens=1): the client's time to the first frame,
  and the server's own means over the same requests: ``vllm:time_to_first_token_seconds`` (arrival
  to first token) and ``vllm:request_prefill_time_seconds`` (scheduled to first token).
- Decode: B fresh C-token prompts sent as ONE request (``prompt`` is a list of B token-id lists,
  ``ignore_eos``, fixed output length), so all B reach the engine together: as separate HTTP
  requests they would reach it over several steps, since the front end spends about a decode
  step (~2 ms) on each request it admits. Per trial, the server's TPOT
  (``vllm:request_decode_time_seconds``: engine timestamps, last token minus first, per request)
  and ITL, and the engine steps the trial took (a check that the B requests really ran as one
  batch). Trials run round-robin over the cases, so a burst of other load on the machine hits all
  of them.

Usage:
    python benchmarks/vllm_cpu_profile.py [--repeats 9] [--decode-repeats 5] [--out PATH.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.vllm_support import (
    SERVED_MODEL_NAME,
    VllmServer,
    VllmServerConfig,
    build_model,
    ensure_vllm_env,
)
from tests.vllm_support.build_tiny_model import TinyModelSpec

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "vllm_cpu_profile.json"
FIRST_ORDINARY_TOKEN = 5  # ids 0-4 are the special tokens


@dataclass
class StreamTrace:
    """When each token of one streamed completion arrived (seconds since the request was sent)."""

    sent: float
    arrivals: list[tuple[float, int]] = field(default_factory=list)  # (time, tokens in frame)

    @property
    def first(self) -> float:
        return self.arrivals[0][0]

    @property
    def last(self) -> float:
        return self.arrivals[-1][0]


def random_prompt(rng: random.Random, length: int, vocab: int) -> list[int]:
    return [rng.randrange(FIRST_ORDINARY_TOKEN, vocab) for _ in range(length)]


async def stream_completion(
    session: aiohttp.ClientSession, url: str, prompt: list[int], max_tokens: int
) -> StreamTrace:
    body = {
        "model": SERVED_MODEL_NAME,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "temperature": 0.0,
        "stream": True,
        "return_token_ids": True,
    }
    trace = StreamTrace(sent=time.perf_counter())
    async with session.post(url, json=body) as resp:
        resp.raise_for_status()
        async for line in resp.content:
            if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                continue
            choices = json.loads(line[6:])["choices"]
            if choices:
                n = len(choices[0].get("token_ids") or []) or 1
                trace.arrivals.append((time.perf_counter(), n))
    return trace


async def scrape(session: aiohttp.ClientSession, base_url: str) -> dict[str, float]:
    async with session.get(f"{base_url}/metrics") as resp:
        text = await resp.text()
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[sample.name] = values.get(sample.name, 0.0) + sample.value
    return values


def histogram_mean_ms(before: dict[str, float], after: dict[str, float], name: str) -> float:
    """Mean of a histogram's observations between two scrapes, in ms."""
    count = after[f"{name}_count"] - before[f"{name}_count"]
    total = after[f"{name}_sum"] - before[f"{name}_sum"]
    return 1000.0 * total / count if count else float("nan")


def summary_ms(values_s: list[float]) -> dict[str, float]:
    ms = sorted(1000.0 * v for v in values_s)
    return {
        "median": statistics.median(ms),
        "min": ms[0],
        "max": ms[-1],
        "n": len(ms),
    }


async def measure_ttft(
    session: aiohttp.ClientSession,
    server: VllmServer,
    rng: random.Random,
    lengths: list[int],
    repeats: int,
    vocab: int,
) -> list[dict[str, Any]]:
    url = f"{server.base_url}/v1/completions"
    rows = []
    for length in lengths:
        before = await scrape(session, server.base_url)
        samples = []
        for _ in range(repeats):
            trace = await stream_completion(session, url, random_prompt(rng, length, vocab), 1)
            samples.append(trace.first - trace.sent)
        after = await scrape(session, server.base_url)
        rows.append(
            {
                "prompt_tokens": length,
                "client_ttft_ms": summary_ms(samples),
                "server_ttft_ms_mean": histogram_mean_ms(
                    before, after, "vllm:time_to_first_token_seconds"
                ),
                "server_prefill_ms_mean": histogram_mean_ms(
                    before, after, "vllm:request_prefill_time_seconds"
                ),
            }
        )
        print(f"ttft  prompt={length:4d}  {rows[-1]['client_ttft_ms']['median']:7.1f} ms")
    return rows


@dataclass(frozen=True)
class DecodeCase:
    batch: int
    context: int
    output_tokens: int


@dataclass
class DecodeTally:
    """The trials of one case, from the server's counters before and after each trial."""

    case: DecodeCase
    server_tpot_s: list[float] = field(default_factory=list)  # one mean per trial
    server_itl_s: list[float] = field(default_factory=list)
    engine_steps: list[float] = field(default_factory=list)
    client_wall_s: list[float] = field(default_factory=list)

    def add(self, before: dict[str, float], after: dict[str, float], wall_s: float) -> None:
        def delta(name: str) -> float:
            return after[name] - before[name]

        case = self.case
        decode_s = delta("vllm:request_decode_time_seconds_sum")
        self.server_tpot_s.append(decode_s / (case.batch * (case.output_tokens - 1)))
        itl_count = delta("vllm:inter_token_latency_seconds_count")
        self.server_itl_s.append(delta("vllm:inter_token_latency_seconds_sum") / itl_count)
        self.engine_steps.append(delta("vllm:iteration_tokens_total_count"))
        self.client_wall_s.append(wall_s)

    def row(self) -> dict[str, Any]:
        return {
            "batch": self.case.batch,
            "context_tokens": self.case.context,
            "output_tokens": self.case.output_tokens,
            "server_tpot_ms": summary_ms(self.server_tpot_s),
            "server_itl_ms": summary_ms(self.server_itl_s),
            "engine_steps_per_trial": statistics.median(self.engine_steps),
            "client_wall_ms": summary_ms(self.client_wall_s),
        }


async def decode_trial(
    session: aiohttp.ClientSession,
    server: VllmServer,
    rng: random.Random,
    tally: DecodeTally,
    vocab: int,
) -> None:
    case = tally.case
    body = {
        "model": SERVED_MODEL_NAME,
        "prompt": [random_prompt(rng, case.context, vocab) for _ in range(case.batch)],
        "max_tokens": case.output_tokens,
        "ignore_eos": True,
        "temperature": 0.0,
    }
    before = await scrape(session, server.base_url)
    started = time.perf_counter()
    async with session.post(f"{server.base_url}/v1/completions", json=body) as resp:
        resp.raise_for_status()
        usage = (await resp.json())["usage"]
    wall_s = time.perf_counter() - started
    assert usage["completion_tokens"] == case.batch * case.output_tokens, usage
    tally.add(before, await scrape(session, server.base_url), wall_s)


async def measure_decode(
    session: aiohttp.ClientSession,
    server: VllmServer,
    rng: random.Random,
    cases: list[DecodeCase],
    repeats: int,
    vocab: int,
) -> list[dict[str, Any]]:
    """Round-robin over the cases, so a burst of other load on the machine hits them all."""
    tallies = [DecodeTally(case) for case in cases]
    for _ in range(repeats):
        for tally in tallies:
            await decode_trial(session, server, rng, tally, vocab)
    rows = [tally.row() for tally in tallies]
    for row in rows:
        print(
            f"decode batch={row['batch']:2d} ctx={row['context_tokens']:4d}"
            f"  tpot {row['server_tpot_ms']['median']:6.2f} ms"
            f"  steps/trial {row['engine_steps_per_trial']:.0f}"
        )
    return rows


def group_pss_mib(server: VllmServer) -> float:
    """Proportional set size of the server's whole process group (shared pages counted once)."""
    total_kib = 0
    for pid in server.pids():
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total_kib += int(line.split()[1])
        except OSError:
            continue
    return total_kib / 1024


def machine_info() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        # The cores are shared with other work here; the load says how much.
        "loadavg_1m_at_end": round(os.getloadavg()[0], 2),
    }


async def run_measurements(server: VllmServer, args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    vocab = TinyModelSpec().vocab_size
    url = f"{server.base_url}/v1/completions"
    timeout = aiohttp.ClientTimeout(total=600)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        for _ in range(3):  # warm-up: first requests pay for lazy initialisation
            await stream_completion(session, url, random_prompt(rng, 256, vocab), 8)
        ttft = await measure_ttft(session, server, rng, args.prompt_lens, args.repeats, vocab)
        cases = [DecodeCase(b, c, args.output_tokens) for c in args.contexts for b in args.batches]
        decode = await measure_decode(session, server, rng, cases, args.decode_repeats, vocab)
    return {"ttft": ttft, "decode": decode}


def _flags_without_model_and_port(config: VllmServerConfig) -> list[str]:
    args = config.cli_args(0)
    drop = {i for i, a in enumerate(args) if a in ("--model", "--port")}
    return [a for i, a in enumerate(args) if i not in drop and i - 1 not in drop]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--prompt-lens", type=_ints, default=[16, 128, 512, 900])
    p.add_argument("--batches", type=_ints, default=[1, 4, 8, 16, 32])
    p.add_argument("--contexts", type=_ints, default=[32, 768])
    p.add_argument("--output-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=9, help="TTFT samples per prompt length")
    p.add_argument("--decode-repeats", type=int, default=5, help="trials per (batch, context)")
    p.add_argument("--seed", type=int, default=7)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    venv = ensure_vllm_env()
    with tempfile.TemporaryDirectory(prefix="vllm-profile-") as tmp:
        model_dir = build_model(venv, Path(tmp) / "model")
        config = VllmServerConfig(model_dir=model_dir, max_num_seqs=max(args.batches))
        server = VllmServer(venv, config)
        started = time.monotonic()
        with server:
            startup_s = time.monotonic() - started
            print(f"server ready in {startup_s:.1f} s")
            results = asyncio.run(run_measurements(server, args))
            pss = group_pss_mib(server)
    report = {
        "meta": {
            "command": " ".join(["python benchmarks/vllm_cpu_profile.py", *(argv or sys.argv[1:])]),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "machine": machine_info(),
            "server_flags": _flags_without_model_and_port(config),
            "model": TinyModelSpec().__dict__,
            "startup_s": round(startup_s, 1),
            "server_pss_mib_after_run": round(pss),
        },
        **results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

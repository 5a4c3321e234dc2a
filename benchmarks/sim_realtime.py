"""Real-time serving cost of the simulator: SSE chunks/s on one core, and latency it adds.

Two measurements, each against a fresh ``vcp sim`` process pinned to CPU 0 while this client runs
pinned to CPU 1 (so the server has its core):

1. Capacity: ``--time-scale 0`` (engine steps take no wall time), so the server is CPU-bound.
   C concurrent streams (starts staggered over one request's length) re-issue ``max_tokens``
   completions for ``--duration`` seconds; we count SSE chunks and tokens received, and the
   server's CPU time. Run once with coalescing off (one chunk per token: the raw chunks/s
   ceiling) and once with the default chunk budget.
2. Added latency: ``--time-scale 1`` (real time). Per request the client measures wall TTFT
   (send → first chunk) and E2E (send → ``[DONE]``); the server's own histograms give the same in
   model time. The difference is what HTTP, Python and coalescing add on top of the modelled GPU.

Usage::

    python benchmarks/sim_realtime.py                  # 1, 16, 64 streams, 5 s each
    python benchmarks/sim_realtime.py --streams 1 16 64 256 --duration 10 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

VCP = shutil.which("vcp", path=str(Path(sys.executable).parent)) or "vcp"


@dataclass
class Result:
    mode: str
    streams: int
    seconds: float
    requests: int = 0
    chunks: int = 0
    tokens: int = 0
    wall_ttft: list[float] = field(default_factory=list)
    wall_e2e: list[float] = field(default_factory=list)
    model_ttft_mean: float = 0.0
    model_e2e_mean: float = 0.0
    server_cpu: float = 0.0  # CPU seconds the server used during the measurement

    def row(self) -> dict[str, float | int | str]:
        out: dict[str, float | int | str] = {
            "mode": self.mode,
            "streams": self.streams,
            "chunks_per_s": round(self.chunks / self.seconds),
            "tokens_per_s": round(self.tokens / self.seconds),
            "tokens_per_chunk": round(self.tokens / max(self.chunks, 1), 2),
            "server_cpu_pct": round(100 * self.server_cpu / self.seconds),
        }
        if self.wall_e2e:
            wall_ttft = sum(self.wall_ttft) / len(self.wall_ttft)
            wall_e2e = sum(self.wall_e2e) / len(self.wall_e2e)
            out |= {
                "model_ttft_ms": round(1e3 * self.model_ttft_mean, 2),
                "added_ttft_ms": round(1e3 * (wall_ttft - self.model_ttft_mean), 2),
                "model_e2e_ms": round(1e3 * self.model_e2e_mean, 1),
                "added_e2e_ms": round(1e3 * (wall_e2e - self.model_e2e_mean), 2),
                "added_e2e_pct": round(100 * (wall_e2e / self.model_e2e_mean - 1), 2),
            }
        return out


class SimProcess:
    """``vcp sim`` on CPU 0 (when the machine has a second core for the client)."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [VCP, "sim", "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            preexec_fn=_pin(0),
        )
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        self.url = next(w for w in line.split() if w.startswith("http://"))

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server so far (Linux /proc; 0 elsewhere)."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def _pin(cpu: int):  # type: ignore[no-untyped-def]
    def pin() -> None:
        if hasattr(os, "sched_setaffinity") and os.cpu_count() and os.cpu_count() > 1:
            os.sched_setaffinity(0, {cpu})

    return pin


async def _wait_healthy(session: aiohttp.ClientSession, url: str) -> None:
    for _ in range(400):
        try:
            async with session.get(url + "/health") as r:
                if r.status == 200:
                    return
        except aiohttp.ClientConnectionError:
            pass
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{url} did not become healthy")


async def _one_request(session: aiohttp.ClientSession, url: str, body: dict, res: Result) -> None:
    t0 = time.perf_counter()
    first: float | None = None
    async with session.post(url + "/v1/completions", json=body) as r:
        async for line in r.content:
            if line.startswith(b"data: {"):
                res.chunks += 1
                if first is None:
                    first = time.perf_counter()
            elif line.startswith(b"data: [DONE]"):
                break
    res.requests += 1
    res.tokens += body["max_tokens"]
    res.wall_ttft.append((first or t0) - t0)
    res.wall_e2e.append(time.perf_counter() - t0)


async def _drive(sim: SimProcess, streams: int, duration: float, tokens: int, res: Result) -> None:
    url = sim.url
    body = {"prompt": "benchmark " * 100, "max_tokens": tokens, "ignore_eos": True, "stream": True}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        await _wait_healthy(session, url)
        await _one_request(session, url, {**body, "max_tokens": 2}, Result("warm-up", 1, 1.0))
        async with session.get(url + "/metrics") as r:
            before = _model_sums(await r.text())
        deadline = time.perf_counter() + duration

        async def loop(i: int) -> None:
            # Stagger the starts over one request's length so that streams do not all begin
            # and end in the same engine step (a steady state, not a synchronised burst).
            await asyncio.sleep(i / streams * min(1.0, tokens * 0.008))
            while time.perf_counter() < deadline:
                await _one_request(session, url, body, res)

        t0, cpu0 = time.perf_counter(), sim.cpu_seconds()
        await asyncio.gather(*(loop(i) for i in range(streams)))
        res.seconds = time.perf_counter() - t0
        res.server_cpu = sim.cpu_seconds() - cpu0
        async with session.get(url + "/metrics") as r:
            after = _model_sums(await r.text())
    for key in ("ttft", "e2e"):
        (s0, c0), (s1, c1) = before[key], after[key]
        setattr(res, f"model_{key}_mean", (s1 - s0) / max(c1 - c0, 1))


def _model_sums(text: str) -> dict[str, tuple[float, float]]:
    """(sum, count) of the server's TTFT and E2E histograms (model seconds)."""
    wanted = {"vllm:time_to_first_token_seconds": "ttft", "vllm:e2e_request_latency_seconds": "e2e"}
    out = {}
    for fam in text_string_to_metric_families(text):
        if fam.name in wanted:
            vals = {s.name.rsplit("_", 1)[-1]: s.value for s in fam.samples}
            out[wanted[fam.name]] = (vals["sum"], vals["count"])
    return out


def run(mode: str, streams: int, duration: float, tokens: int, sim_args: list[str]) -> Result:
    sim = SimProcess(*sim_args)
    try:
        res = Result(mode, streams, duration)
        asyncio.run(_drive(sim, streams, duration, tokens, res))
        return res
    finally:
        sim.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    ap.add_argument("--tokens", type=int, default=128, help="max_tokens per request")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = ap.parse_args()
    _pin(1)()  # the client keeps off the server's core
    base = ["--model", "llama-3-8b", "--gpu", "H100", "--seed", "0"]
    plans = [
        ("capacity, no coalescing", ["--time-scale", "0", "--max-chunks-per-second", "0"]),
        ("capacity, default budget", ["--time-scale", "0"]),
        ("real time, default budget", ["--time-scale", "1"]),
    ]
    rows = []
    for mode, extra in plans:
        for n in args.streams:
            res = run(mode, n, args.duration, args.tokens, base + extra)
            row = res.row()
            if mode.startswith("capacity"):
                row = {k: v for k, v in row.items() if not k.startswith(("model_", "added_"))}
            rows.append(row)
            print(json.dumps(row), flush=True)
    _print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


def _print_table(rows: list[dict]) -> None:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    print("\n| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")


if __name__ == "__main__":
    main()

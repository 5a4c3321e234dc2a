#!/usr/bin/env python3
"""Soak test: many requests through the gateway to a simulated fleet under random faults.

The gateway (``vcp serve``'s app, in-process, on a loopback port) fronts ``--instances``
simulated vLLM servers. ``--concurrency`` clients send ``--requests`` OpenAI requests over HTTP:
chat and completions, streamed or not, mixed priorities, some with hard deadlines, some that
hang up early, some invalid. Meanwhile a fault injector switches a fault on a random server
about every ``--fault-every`` seconds (5xx bursts, hangs, crashes mid-stream, 10x slowdowns,
failing health checks, error frames, malformed frames, restarts — each kind once per round, in
random order) and clears it 0.5–1.5 s later.

Checked at the end (the script exits 1 if any fails):

* every request got an HTTP answer (no client-side timeout = no hang); every 200 stream ended
  with ``data: [DONE]`` (an error frame before it when it broke), every 200 body is valid JSON;
* the control plane's counters: submitted = completed + failed + cancelled + rejected + timeout
  + in_flight, with in_flight = 0 once the clients are done (no request without a terminal
  state), and submitted = the requests that reached it;
* no asyncio task left behind by the gateway;
* resident memory growth from the end of the warm-up to the end (reported; bounded by the
  result history, whose size is fixed).

    python benchmarks/soak.py                                   # 20,000 requests (a few minutes)
    python benchmarks/soak.py --requests 2000 --json /tmp/soak.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import random
import sys
import time
import tracemalloc
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from vllm_control_plane.backends.base import Timeouts
from vllm_control_plane.backends.openai_http import OpenAIHTTPBackend
from vllm_control_plane.config import parse_config
from vllm_control_plane.gateway import Gateway, GatewayServer

FAULTS: list[tuple[str, dict[str, Any]]] = [
    ("5xx-burst", {"error_rate": 1.0, "error_status": 503}),
    ("5xx-half", {"error_rate": 0.5, "error_status": 500}),
    ("hang", {"hang": True}),
    ("crash-mid-stream", {"crash_after_tokens": 5}),
    ("slow-10x", {"slowdown": 10.0}),
    ("unhealthy", {"unhealthy": True}),
    ("error-frame", {"midstream_error_after_tokens": 3}),
    ("malformed-first", {"malformed_sse_after_tokens": 0}),
    ("malformed-later", {"malformed_sse_after_tokens": 3}),
    ("restart", {"startup_delay_s": 1.0}),
]
CLEAR = {
    "error_rate": 0.0, "hang": False, "crash_after_tokens": None, "slowdown": 1.0,
    "unhealthy": False, "midstream_error_after_tokens": None, "malformed_sse_after_tokens": None,
}  # fmt: skip


def rss_mib() -> float:
    """Resident set size of this process (Linux ``/proc``)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def gateway_config(args: argparse.Namespace) -> dict[str, Any]:
    sims = [
        {"name": f"sim-{i}", "model": "llama-3-8b", "time_scale": args.time_scale,
         "mean_output_tokens": 16.0, "seed": i, "max_concurrent_requests": args.per_instance}
        for i in range(args.instances)
    ]  # fmt: skip
    return {
        "scheduling_policy": "priority",
        "routing_strategy": "least_request",
        "monitor": {
            "health_interval_s": 0.25,
            "scrape_interval_s": 0.25,
            "unhealthy_threshold": 2,
            "healthy_threshold": 2,
        },
        "limits": {
            "max_queued": args.max_queued,
            "hard_deadlines": True,
            "history_size": 5000,
        },
        "server": {"shutdown_grace_s": 5.0},
        "simulated": sims,
    }


@dataclass
class Tally:
    statuses: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    reached: int = 0  # requests the control plane accepted for scheduling (submitted)
    hangs: int = 0
    error_frames: int = 0
    disconnects: int = 0
    done: int = 0


class Client:
    """Sends one random request and checks the answer's shape."""

    def __init__(self, http: aiohttp.ClientSession, url: str, tally: Tally, rng: random.Random):
        self.http, self.url, self.tally, self.rng = http, url, tally, rng

    def _request(self, i: int) -> tuple[str, bytes, dict[str, str], bool, bool]:
        rng = self.rng
        chat = rng.random() < 0.6
        stream = rng.random() < 0.5
        body: dict[str, Any] = {"model": "llama-3-8b", "max_tokens": rng.randint(1, 32),
                                "stream": stream}  # fmt: skip
        if chat:
            body["messages"] = [{"role": "user", "content": f"question {i} " * rng.randint(1, 20)}]
        else:
            body["prompt"] = f"prompt {i} " * rng.randint(1, 40)
        headers = {
            "X-Request-Id": f"soak-{i}",
            "X-Priority": rng.choice(["high", "normal", "normal", "low", "background"]),
        }
        if rng.random() < 0.05:
            headers["X-SLO-Deadline-Ms"] = str(rng.randint(20, 2000))
        raw = orjson.dumps(body)
        if rng.random() < 0.02:  # invalid: the gateway refuses it before the control plane
            raw = rng.choice([b"{not json", orjson.dumps({**body, "max_tokens": -5}),
                              orjson.dumps({**body, "n": 3})])  # fmt: skip
        path = "/v1/chat/completions" if chat else "/v1/completions"
        hang_up = rng.random() < 0.03
        return path, raw, headers, stream, hang_up

    async def one(self, i: int, timeout: float) -> None:
        path, raw, headers, stream, hang_up = self._request(i)
        headers["Content-Type"] = "application/json"
        try:
            await asyncio.wait_for(self._send(path, raw, headers, stream, hang_up), timeout)
        except asyncio.TimeoutError:
            self.tally.hangs += 1
            self.tally.violations.append(f"soak-{i}: no answer within {timeout} s")
        self.tally.done += 1

    async def _send(self, path: str, raw: bytes, headers: dict[str, str], stream: bool,
                    hang_up: bool) -> None:  # fmt: skip
        async with self.http.post(self.url + path, data=raw, headers=headers) as resp:
            self.tally.statuses[str(resp.status)] += 1
            if resp.status != 200:
                body = await resp.read()
                self._check_error(headers["X-Request-Id"], resp.status, body)
                return
            if hang_up:
                self.tally.disconnects += 1
                await resp.content.readany()
                resp.close()
                return
            body = await resp.read()
        self._check_ok(headers["X-Request-Id"], body, stream)

    def _check_error(self, rid: str, status: int, body: bytes) -> None:
        try:
            err = orjson.loads(body)["error"]
            assert isinstance(err["message"], str)
        except (orjson.JSONDecodeError, KeyError, TypeError, AssertionError):
            self.tally.violations.append(f"{rid}: HTTP {status} without an error envelope")
        if status >= 500 and status not in (502, 503, 504):
            self.tally.violations.append(f"{rid}: HTTP {status}: {body[:200]!r}")

    def _check_ok(self, rid: str, body: bytes, stream: bool) -> None:
        if not stream:
            try:
                assert orjson.loads(body)["choices"]
            except (orjson.JSONDecodeError, KeyError, AssertionError):
                self.tally.violations.append(f"{rid}: 200 body is not a completion")
            return
        if not body.endswith(b"data: [DONE]\n\n"):
            self.tally.violations.append(f"{rid}: stream truncated: {body[-120:]!r}")
        if b'data: {"error"' in body:
            self.tally.error_frames += 1


async def inject_faults(gw: Gateway, args: argparse.Namespace, stop: asyncio.Event,
                        log: Counter[str]) -> None:  # fmt: skip
    rng = random.Random(args.seed + 1)
    names = [f"sim-{i}" for i in range(args.instances)]
    order: list[tuple[str, dict[str, Any]]] = []
    while not stop.is_set():
        await _sleep_or_stop(stop, rng.uniform(0.5, 1.5) * args.fault_every)
        if stop.is_set():
            return
        if not order:  # every kind once per round, in a random order
            order = rng.sample(FAULTS, len(FAULTS))
        name = rng.choice(names)
        label, fault = order.pop()
        server = gw.fleet.server(name)
        server.set_faults(**fault)
        log[label] += 1
        await _sleep_or_stop(stop, rng.uniform(0.5, 1.5))
        server.set_faults(**CLEAR)


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


class _CountWarnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        for key in ("circuit opened", "circuit closed", "is now unhealthy", "is now healthy"):
            if key in msg:
                self.counts[key] += 1


async def run(args: argparse.Namespace) -> dict[str, Any]:
    warnings = _CountWarnings()
    logging.getLogger("vllm_control_plane").addHandler(warnings)
    logging.getLogger("vllm_control_plane").setLevel(logging.WARNING)
    backend = OpenAIHTTPBackend(Timeouts(connect=1.0, first_token=3.0, idle=3.0))
    gw = Gateway(parse_config(gateway_config(args)), backend=backend)
    server = GatewayServer(gw, port=0)
    await server.start()
    tasks_before = len(asyncio.all_tasks())
    tally, faults = Tally(), Counter[str]()
    rng = random.Random(args.seed)
    stop = asyncio.Event()
    injector = asyncio.create_task(inject_faults(gw, args, stop, faults))
    rss: list[tuple[int, float]] = [(0, rss_mib())]
    marks: list[tracemalloc.Snapshot] = []
    if args.tracemalloc:  # from the start: a snapshot only sees what was allocated after it
        tracemalloc.start()
    started = time.monotonic()
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    async with aiohttp.ClientSession(connector=connector) as http:
        client = Client(http, server.url, tally, rng)
        next_id = iter(range(args.requests))

        async def worker() -> None:
            for i in next_id:
                await client.one(i, args.client_timeout)
                if tally.done % 2000 == 0:
                    rss.append((tally.done, rss_mib()))
                    if args.tracemalloc and tally.done == args.warmup:
                        marks.append(tracemalloc.take_snapshot())
                    print(f"  {tally.done} requests, {time.monotonic() - started:.0f} s, "
                          f"RSS {rss[-1][1]:.0f} MiB", flush=True)  # fmt: skip

        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    elapsed = time.monotonic() - started
    if marks:
        _print_growth(marks[0], tracemalloc.take_snapshot())
    stop.set()
    await injector
    await _settle(gw)
    counters = gw.cp.core.counters()
    report = _report(args, gw, tally, faults, warnings.counts, counters, rss, elapsed)
    await server.close()
    left = len(asyncio.all_tasks()) - 1  # this task
    report["tasks"] = {"while_serving": tasks_before - 1, "left_after_close": left}
    report["checks"]["no task left after close"] = left == 0
    report["ok"] = all(report["checks"].values())
    return report


def _print_growth(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot) -> None:
    """Where Python memory grew after the warm-up (``--tracemalloc``)."""
    print("top allocation growth since the warm-up:")
    for stat in after.compare_to(before, "lineno")[:12]:
        print(f"  {stat.size_diff / 1024:+9.0f} KiB  {stat.count_diff:+7d}  {stat.traceback}")


async def _settle(gw: Gateway) -> None:
    """Clients are done; cancelled streams may still be closing. Wait (bounded) until idle."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (gw.cp.core.counters().in_flight or gw.in_flight):
        await asyncio.sleep(0.05)


def _report(args, gw, tally, faults, warnings, counters, rss, elapsed) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    c = counters
    identity = c.submitted == c.completed + c.failed + c.cancelled + c.rejected + c.timeout + (
        c.in_flight
    )
    warm = next((m for n, m in rss if n >= args.warmup), rss[0][1])
    checks = {
        "every request answered (no hang)": tally.hangs == 0,
        "answers well-formed": not tally.violations,
        "accounting identity": identity,
        "no request without a terminal state (in_flight = 0)": c.in_flight == 0,
        "gateway in_flight = 0": gw.in_flight == 0,
    }
    return {
        "requests": args.requests,
        "concurrency": args.concurrency,
        "instances": args.instances,
        "elapsed_s": round(elapsed, 1),
        "requests_per_s": round(args.requests / elapsed, 1),
        "http_statuses": dict(sorted(tally.statuses.items())),
        "stream_error_frames": tally.error_frames,
        "client_disconnects": tally.disconnects,
        "counters": c.as_dict(),
        "retry_budget_refusals": gw.cp.retry_budget.refused,
        "faults_injected": dict(faults),
        "detector_events": dict(warnings),
        "rss_mib": {
            "start": round(rss[0][1], 1),
            "after_warmup": round(warm, 1),
            "end": round(rss[-1][1], 1),
            "growth_after_warmup": round(rss[-1][1] - warm, 1),
            "samples": [(n, round(m, 1)) for n, m in rss],
        },
        "violations": tally.violations[:20],
        "checks": checks,
        "ok": all(checks.values()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--instances", type=int, default=4)
    ap.add_argument("--per-instance", type=int, default=8, help="max_concurrent_requests")
    ap.add_argument("--max-queued", type=int, default=32)
    ap.add_argument("--time-scale", type=float, default=0.01)
    ap.add_argument("--fault-every", type=float, default=1.0, help="mean seconds between faults")
    ap.add_argument("--client-timeout", type=float, default=60.0)
    ap.add_argument("--warmup", type=int, default=2000, help="requests before the RSS baseline")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tracemalloc", action="store_true", help="print where memory grew")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    report = asyncio.run(run(args))
    print(json.dumps(report, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    sys.exit(0 if report["ok"] else 1)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Router overhead, side by side in one run: direct vs nginx vs vllm-router vs ``vcp serve``.

Two zero-delay OpenAI-compatible backends (``gateway_backend.py``) stand in for engines; each
router balances over both. For every router the script measures:

* CPU per request: ``wrk`` at 64 connections sends non-streamed chat requests; the router's
  CPU time (utime + stime of all its processes from ``/proc/<pid>/stat``) divided by the
  requests served;
* added latency at concurrency 1: ``wrk -c1 --latency`` p50 / p99 minus the direct path's;
* streaming TTFT at 64 concurrent streams: an asyncio client keeps 64 streams open against
  backends that pace their frames ``--itl-ms`` apart and times the first SSE frame (the chat role
  frame, which the stand-in sends at once) and the first frame with generated text (one frame gap
  later). The 64 clients start spread over one answer's duration, so requests arrive steadily;
  ``--lockstep`` starts them together, and they keep arriving in waves of 64.

``vcp serve`` runs with its scheduling policy and routing strategy in the path (the defaults,
``adaptive`` + ``load_balanced``), health checks and load scraping on. Figures vary with the
machine; the ratios between routers measured in the same run are what to compare. All routers run
at once and are measured in ``--rounds`` interleaved rounds (each round visits every router), so a
change in the machine's load during the run hits every router alike; samples are pooled over the
rounds.

    bash benchmarks/gateway_overhead.sh            # installs nginx, wrk, vllm-router; runs all
    python benchmarks/gateway_overhead.py --duration 10 --write-docs
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson

HERE = Path(__file__).resolve().parent
DOCS = HERE.parent / "docs" / "benchmarks.md"
SECTION = "## Gateway overhead"
VLLM_ROUTER = Path.home() / ".cache" / "vcp-bench" / "vllm-router-venv" / "bin" / "vllm-router"
BODY = {"model": "bench-model", "messages": [{"role": "user", "content": "hello there"}],
        "max_tokens": 16}  # fmt: skip
TICK = os.sysconf("SC_CLK_TCK")
STREAM_FRAMES = 19  # frames of one streamed answer (role, 16 tokens, finish, usage): its length


def free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout}s")


def cpu_ticks(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total


# ---------------------------------------------------------------- processes


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    port: int
    extra_pids: list[int] = field(default_factory=list)

    def pids(self) -> list[int]:
        children = Path(f"/proc/{self.popen.pid}/task/{self.popen.pid}/children")
        kids = [int(p) for p in children.read_text().split()] if children.exists() else []
        return [self.popen.pid, *kids, *self.extra_pids]

    def stop(self) -> None:
        self.popen.terminate()
        try:
            self.popen.wait(15)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


def spawn(name: str, cmd: list[str], port: int, log: Path) -> Proc:
    out = log.open("wb")
    popen = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_port(port)
    except RuntimeError:
        popen.kill()
        raise RuntimeError(f"{name} did not start; see {log}") from None
    return Proc(name, popen, port)


def start_backends(tmp: Path, itl_ms: float) -> list[Proc]:
    procs = []
    for i in range(2):
        port = free_port()
        cmd = [sys.executable, str(HERE / "gateway_backend.py"), "--port", str(port),
               "--itl-ms", str(itl_ms)]  # fmt: skip
        procs.append(spawn(f"backend{i}", cmd, port, tmp / f"backend{i}-{itl_ms}.log"))
    return procs


def start_router(kind: str, backends: list[Proc], tmp: Path) -> Proc | None:
    urls = [f"http://127.0.0.1:{b.port}" for b in backends]
    port = free_port()
    log = tmp / f"{kind}-{port}.log"
    if kind == "direct":
        return None
    if kind == "nginx":
        conf = tmp / f"nginx-{port}.conf"
        conf.write_text(_nginx_conf(tmp, port, [b.port for b in backends]))
        return spawn(kind, ["nginx", "-p", str(tmp), "-c", str(conf), "-g", "daemon off;"],
                     port, log)  # fmt: skip
    if kind == "vllm-router":
        cmd = [str(VLLM_ROUTER), "--host", "127.0.0.1", "--port", str(port), "--worker-urls",
               *urls, "--policy", "round_robin", "--log-level", "warning"]  # fmt: skip
        return spawn(kind, cmd, port, log)
    if kind == "vcp":
        cfg = tmp / f"cluster-{port}.yaml"
        cfg.write_text(_vcp_config(urls))
        cmd = [sys.executable, "-m", "vllm_control_plane.cli", "serve", "--config", str(cfg),
               "--port", str(port)]  # fmt: skip
        return spawn(kind, cmd, port, log)
    raise ValueError(f"unknown router {kind!r}")


def _nginx_conf(tmp: Path, port: int, backends: list[int]) -> str:
    servers = "".join(f"server 127.0.0.1:{p};" for p in backends)
    temp = " ".join(f"{k}_temp_path {tmp}/{k};" for k in
                    ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))  # fmt: skip
    return (
        f"worker_processes 1; pid {tmp}/nginx-{port}.pid; error_log {tmp}/nginx-error.log;\n"
        "events { worker_connections 4096; }\n"
        f"http {{ access_log off; {temp}\n"
        f"  upstream backends {{ {servers} keepalive 128; }}\n"
        f"  server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://backends;\n"
        '    proxy_http_version 1.1; proxy_set_header Connection ""; proxy_buffering off; } }\n'
        "}\n"
    )


def _vcp_config(urls: list[str]) -> str:
    lines = ["instances:"]
    for i, url in enumerate(urls):
        lines.append(f"  - {{instance_id: b{i}, url: '{url}', model_name: bench-model, "
                     "gpu_type: H100, max_concurrent_requests: 1000}")  # fmt: skip
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- measurements


def _lua(tmp: Path) -> Path:
    script = tmp / "post.lua"
    body = orjson.dumps(BODY).decode()
    script.write_text(
        f"wrk.method = 'POST'\nwrk.body = '{body}'\n"
        "wrk.headers['Content-Type'] = 'application/json'\n"
    )
    return script


def wrk(url: str, lua: Path, conns: int, seconds: float, latency: bool = False) -> str:
    threads = 1 if conns == 1 else 2
    cmd = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds:g}s", "-s", str(lua)]
    if latency:
        cmd.append("--latency")
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out:
        raise RuntimeError(f"errors from {url}:\n{out}")
    return out


def _requests(out: str) -> int:
    return int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]


def _percentile_ms(out: str, pct: str) -> float:
    value, unit = re.search(rf"\s{pct}%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def measure_cpu(url: str, proc: Proc | None, lua: Path, seconds: float) -> tuple[float, float]:
    """(CPU µs per request of the router, requests/s) at 64 connections."""
    wrk(url, lua, 64, 2)  # warm up: connection pools, JIT-free caches, first allocations
    pids = proc.pids() if proc else []
    before = cpu_ticks(pids)
    out = wrk(url, lua, 64, seconds)
    used_us = (cpu_ticks(pids) - before) / TICK * 1e6
    n = _requests(out)
    return (used_us / n if proc else 0.0), n / seconds


def measure_latency(url: str, lua: Path, seconds: float) -> tuple[float, float]:
    out = wrk(url, lua, 1, seconds, latency=True)
    return _percentile_ms(out, "50"), _percentile_ms(out, "99")


def _has_text(line: bytes) -> bool:
    """A frame with generated text (not the role frame, not an empty finish frame)."""
    return (b'"content":"' in line and b'"content":""' not in line) or b'"text":"' in line


async def _stream_ttft(
    urls: list[str], streams: int, seconds: float, spread_s: float = 0.0
) -> tuple[list[float], list[float]]:
    """(first SSE frame, first frame with text) in ms, per request, for ``seconds``.

    Each client sends its next request when the last one ended. ``spread_s`` staggers their
    first requests over that span (about one request's duration gives steady arrivals, as from
    independent clients); 0 starts all at once, and they then arrive in waves of ``streams``."""
    body = orjson.dumps({**BODY, "stream": True})
    headers = {"Content-Type": "application/json"}
    first_frame: list[float] = []
    first_text: list[float] = []
    stop_at = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker(i: int) -> None:
            url = urls[i % len(urls)]
            await asyncio.sleep(spread_s * i / streams)
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                frame = text = None
                async with session.post(url, data=body, headers=headers) as r:
                    async for line in r.content:
                        if not line.startswith(b"data:"):
                            continue
                        if frame is None:
                            frame = (time.perf_counter() - t0) * 1e3
                        if text is None and _has_text(line):
                            text = (time.perf_counter() - t0) * 1e3
                if frame is not None and text is not None:
                    first_frame.append(frame)
                    first_text.append(text)

        await asyncio.gather(*(worker(i) for i in range(streams)))
    return first_frame, first_text


def _p50_p99(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


# ---------------------------------------------------------------- orchestration


@dataclass
class Row:
    router: str
    cpu_us: float = 0.0
    rps: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    ttft_p50_ms: float = 0.0  # first SSE frame
    ttft_p99_ms: float = 0.0
    text_p50_ms: float = 0.0  # first frame with generated text
    text_p99_ms: float = 0.0
    streams: int = 0  # streamed requests measured
    samples: dict[str, list[float]] = field(default_factory=dict)  # pooled over the rounds

    def add(self, key: str, values: list[float]) -> None:
        self.samples.setdefault(key, []).extend(values)


@contextlib.contextmanager
def running(procs: list[Proc]) -> Iterator[None]:
    try:
        yield
    finally:
        for p in procs:
            p.stop()


def run(routers: list[str], args: argparse.Namespace) -> list[Row]:
    rows = {r: Row(r) for r in routers}
    with tempfile.TemporaryDirectory(prefix="vcp-overhead-") as d:
        tmp = Path(d)
        lua = _lua(tmp)
        phases = [(0.0, "unary"), (args.itl_ms, "stream")]
        for itl, phase in [p for p in phases if p[1] in args.phases.split(",")]:
            backends = start_backends(tmp, itl)
            with running(backends):
                procs = {kind: start_router(kind, backends, tmp) for kind in routers}
                with running([p for p in procs.values() if p is not None]):
                    for rnd in range(args.rounds):
                        for kind in routers:
                            _measure(rows[kind], phase, procs[kind], backends, lua, args)
                        print(f"  {phase} round {rnd + 1}/{args.rounds} done", file=sys.stderr)
    for row in rows.values():
        _summarise(row)
    return list(rows.values())


def _urls(proc: Proc | None, backends: list[Proc]) -> list[str]:
    """The router's URL; for the direct path, every backend (the clients spread over them as a
    router would, so each backend carries the same load as behind a router)."""
    ports = [proc.port] if proc else [b.port for b in backends]
    return [f"http://127.0.0.1:{p}/v1/chat/completions" for p in ports]


def _measure(
    row: Row,
    phase: str,
    proc: Proc | None,
    backends: list[Proc],
    lua: Path,
    args: argparse.Namespace,
) -> None:
    urls = _urls(proc, backends)
    if phase == "unary":
        cpu_us, rps = measure_cpu(urls[0], proc, lua, args.duration)
        p50, p99 = measure_latency(urls[0], lua, args.latency_duration)
        row.add("cpu_us", [cpu_us])
        row.add("rps", [rps])
        row.add("p50", [p50])
        row.add("p99", [p99])
    else:
        asyncio.run(_stream_ttft(urls, 4, 0.5))  # warm up: connections, pools
        spread = 0.0 if args.lockstep else args.itl_ms * STREAM_FRAMES / 1e3
        frame, text = asyncio.run(_stream_ttft(urls, args.streams, args.stream_duration, spread))
        row.add("frame", frame)
        row.add("text", text)
        row.add("frame_p50", [statistics.median(frame)])


_PER_ROUND = ("cpu_us", "rps", "p50", "p99")


def _summarise(row: Row) -> None:
    """Medians over the rounds for the per-round figures; pooled percentiles for TTFT."""
    med = {k: statistics.median(v) for k, v in row.samples.items() if k in _PER_ROUND}
    row.cpu_us, row.rps = med.get("cpu_us", 0.0), med.get("rps", 0.0)
    row.p50_ms, row.p99_ms = med.get("p50", 0.0), med.get("p99", 0.0)
    if row.samples.get("frame"):
        row.ttft_p50_ms, row.ttft_p99_ms = _p50_p99(row.samples["frame"])
        row.text_p50_ms, row.text_p99_ms = _p50_p99(row.samples["text"])
        row.streams = len(row.samples["frame"])


def _ratio(row: Row, peer: Row | None, key: str) -> str:
    """Median over the rounds of the round's ratio: each round compares routers measured
    minutes apart at most, so a drifting machine load cancels out."""
    if peer is None or (row.router == "direct" and key == "cpu_us"):
        return "–"
    pairs = zip(row.samples.get(key, []), peer.samples.get(key, []), strict=True)
    ratios = [a / b for a, b in pairs if a and b]
    return f"{statistics.median(ratios):.2f}×" if ratios else "–"


def table(rows: list[Row]) -> str:
    by = {r.router: r for r in rows}
    direct, peer = by.get("direct"), by.get("vllm-router")
    head = (
        "| router | CPU µs/request (64 conns) | req/s | added p50 ms | added p99 ms "
        "| TTFT p50 ms (64 streams) | TTFT p99 ms | first text p50 / p99 ms | streams "
        "| CPU vs vllm-router | TTFT p50 vs vllm-router (median of rounds) |"
    )
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        unary = _unary_cells(r, direct) if r.samples.get("p50") else "| – | – | – | – "
        stream = (
            f"| {r.ttft_p50_ms:.2f} | {r.ttft_p99_ms:.2f} "
            f"| {r.text_p50_ms:.2f} / {r.text_p99_ms:.2f} | {r.streams} "
            if r.streams
            else "| – | – | – | – "
        )
        ratios = f"| {_ratio(r, peer, 'cpu_us')} | {_ratio(r, peer, 'frame_p50')} |"
        lines.append(f"| {r.router} {unary}{stream}{ratios}")
    return "\n".join(lines)


def _unary_cells(r: Row, direct: Row | None) -> str:
    add50 = r.p50_ms - direct.p50_ms if direct else float("nan")
    add99 = r.p99_ms - direct.p99_ms if direct else float("nan")
    cpu = f"{r.cpu_us:.0f}" if r.router != "direct" else "–"
    return f"| {cpu} | {r.rps:.0f} | {add50:+.3f} | {add99:+.3f} "


BEGIN, END = "<!-- gateway-overhead:begin -->", "<!-- gateway-overhead:end -->"


def write_docs(text: str) -> None:
    """Replace the measured table in docs/benchmarks.md (between the markers of our section)."""
    doc = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n"
    block = f"{BEGIN}\n{text.rstrip()}\n{END}"
    if BEGIN in doc and END in doc:
        doc = doc[: doc.index(BEGIN)] + block + doc[doc.index(END) + len(END) :]
    else:
        doc = doc.rstrip() + f"\n\n{SECTION}\n\n{block}\n"
    DOCS.write_text(doc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--routers", default="direct,nginx,vllm-router,vcp")
    ap.add_argument("--duration", type=float, default=10.0, help="CPU phase seconds per router")
    ap.add_argument("--latency-duration", type=float, default=5.0)
    ap.add_argument("--streams", type=int, default=64)
    ap.add_argument("--stream-duration", type=float, default=8.0)
    ap.add_argument("--itl-ms", type=float, default=20.0, help="frame gap of streaming backends")
    ap.add_argument("--phases", default="unary,stream",
                    help="unary (CPU, added latency), stream (TTFT), or both")  # fmt: skip
    ap.add_argument("--lockstep", action="store_true",
                    help="start all streams at once (they then arrive in waves) instead of "
                    "spreading their starts over one answer's duration")  # fmt: skip
    ap.add_argument("--rounds", type=int, default=3,
                    help="interleaved rounds over all routers (samples pooled)")  # fmt: skip
    ap.add_argument("--write-docs", action="store_true",
                    help="also put the table into docs/benchmarks.md")  # fmt: skip
    args = ap.parse_args()
    routers = [r for r in args.routers.split(",") if r]
    missing = [t for t, need in (("wrk", True), ("nginx", "nginx" in routers)) if need
               and not shutil.which(t)]  # fmt: skip
    if "vllm-router" in routers and not VLLM_ROUTER.exists():
        missing.append(str(VLLM_ROUTER))
    if missing:
        sys.exit(f"missing: {', '.join(missing)} (run benchmarks/gateway_overhead.sh)")
    rows = run(routers, args)
    text = table(rows)
    print(text)
    if args.write_docs:
        cmd = "python benchmarks/gateway_overhead.py " + " ".join(sys.argv[1:])
        stamp = time.strftime("%Y-%m-%d")
        write_docs(f"Measured {stamp} on {os.cpu_count()} cores with `{cmd}`:\n\n{text}")


if __name__ == "__main__":
    main()

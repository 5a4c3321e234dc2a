"""Simulator fidelity on the CPU: `vcp sim --model tiny-llama --gpu CPU` against real vLLM (CPU).

Two subcommands:

- ``fit`` calibrates the CPU profile. It replays every workload of
  ``benchmarks/results/vllm_cpu_profile.json`` (one prompt at a time for TTFT; B prompts of C
  tokens at once for TPOT) through the pure ``SimEngine`` in virtual time, with candidate
  constants (``t0``, effective memory and FLOP rates, ``t_seq``, ``t_prefill``), and minimises the
  squared log error against the measured engine-side figures (Nelder–Mead in log space). It prints
  the constants to put in ``sim/profiles.py`` and writes ``results/cpu_profile_fit.json``.
- ``compare`` (the default) starts one real vLLM server and one ``vcp sim`` with the same
  ``max_num_seqs``, ``max_model_len``, token budget and 128-token blocks, and runs the same
  closed-loop streamed workload (``tests/vllm_support/workload.py``) on both, point by point and
  alternating, so a burst of other load on the machine hits both. It reports client-side TTFT,
  TPOT and throughput side by side, then what happens inside each server (the engine's share of
  the TTFT, the inter-token latency), and writes ``results/sim_fidelity.json``. It measures the
  real engine's batch-1 inter-token latency before and after the sweeps: against the same figure
  at calibration time, it shows whether other jobs slowed the engine down during the run.
  ``--match-speed`` multiplies the simulator's step times by that ratio (taken once, before the
  sweeps; ``vcp sim --fault-slowdown``) for a machine uniformly slower or faster than the
  calibration one; under load that comes and goes it over- or under-corrects, hence off by
  default.

Usage:
    python benchmarks/sim_fidelity.py fit
    python benchmarks/sim_fidelity.py [compare] [--concurrency 1,8,32] [--prompts 64,768]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.vllm_support import (
    SERVED_MODEL_NAME,
    VllmServer,
    VllmServerConfig,
    build_model,
    ensure_vllm_env,
)
from tests.vllm_support.build_tiny_model import TinyModelSpec
from tests.vllm_support.calibration import (
    MAX_BATCHED_TOKENS,
    MAX_MODEL_LEN,
    MAX_NUM_SEQS,
    PROFILE_JSON,
    CpuConstants,
    log_loss,
    nelder_mead,
    predict,
)
from tests.vllm_support.server import free_ports
from tests.vllm_support.workload import WorkloadPoint, run_point

from vllm_control_plane.sim.profiles import get_gpu

RESULTS = Path(__file__).resolve().parent / "results"


# ---------------------------------------------------------------------------------- fit
def fit(args: argparse.Namespace) -> None:
    profile = json.loads(args.profile.read_text())

    def loss(log_x: np.ndarray) -> float:
        return log_loss(predict(CpuConstants(*np.exp(log_x)).register(), profile))

    start = np.log([1e-3, 10e9, 200e9, 40e-6, 2e-3])
    best = CpuConstants(*(float(v) for v in np.exp(nelder_mead(loss, start, iters=args.iters))))
    rows = predict(best.register(), profile)
    for r in rows:
        r["error"] = r["sim_ms"] / r["real_ms"] - 1
        print(f"{r['what']:24s} real {r['real_ms']:7.2f} sim {r['sim_ms']:7.2f} {r['error']:+.0%}")
    print("constants:", {k: float(f"{v:.3g}") for k, v in asdict(best).items()})
    out = {"command": "python benchmarks/sim_fidelity.py fit", "profile": str(args.profile.name)}
    out |= {"constants": asdict(best), "rows": rows, "log_loss": log_loss(rows)}
    args.fit_out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.fit_out}")


# ------------------------------------------------------------------------------ compare
def fitted_fleet_file(fit_json: Path, port: int, slowdown: float) -> Path:
    """A fleet file serving the tiny model on the ``CPU`` profile with the constants of a fit
    (``fit --fit-out``) instead of the registered ones: a ``gpus:`` entry ``CPU-refit``."""
    c = json.loads(fit_json.read_text())["constants"]
    base = get_gpu("CPU")
    gpu = {"flops": c["flop_rate"], "mem_bw": c["mem_rate"], "mem_bytes": base.mem_bytes,
           "eta_mem": 1.0, "eta_compute": 1.0, "t0": c["t0"], "t_seq": c["t_seq"],
           "t_prefill": c["t_prefill"], "kv_cache_bytes": base.kv_cache_bytes,
           "default_max_num_seqs": base.default_max_num_seqs,
           "default_block_size": base.default_block_size, "t_frontend": base.t_frontend,
           "t_frontend_token": base.t_frontend_token,
           "t_frontend_active": base.t_frontend_active}  # fmt: skip
    server = {"name": "sim", "port": port, "model": "tiny-llama", "gpu": "CPU-refit",
              "served_model_name": SERVED_MODEL_NAME, "max_num_seqs": MAX_NUM_SEQS,
              "max_model_len": MAX_MODEL_LEN, "max_num_batched_tokens": MAX_BATCHED_TOKENS,
              "faults": {"slowdown": slowdown}}  # fmt: skip
    fleet = {"gpus": {"CPU-refit": gpu}, "servers": [server]}
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"vcp-fidelity-fleet-{port}.json"
    path.write_text(json.dumps(fleet))  # JSON is YAML
    return path


@contextmanager
def sim_server(port: int, slowdown: float = 1.0, fit_json: Path | None = None) -> Iterator[str]:
    """``vcp sim`` for the tiny model on the CPU profile, with the real server's settings (the
    profile's default block size is vLLM-CPU's 128 tokens, so no ``--block-size``); ``slowdown``
    multiplies every step time (the simulator's fault knob); ``fit_json``: the constants of that
    fit instead of the registered profile's."""
    if fit_json is not None:
        fleet = fitted_fleet_file(fit_json, port, slowdown)
        cmd = [sys.executable, "-m", "vllm_control_plane.cli", "sim", "--fleet", str(fleet)]
    else:
        cmd = [sys.executable, "-m", "vllm_control_plane.cli", "sim", "--model", "tiny-llama",
               "--gpu", "CPU", "--served-model-name", SERVED_MODEL_NAME,
               "--max-num-seqs", str(MAX_NUM_SEQS), "--max-model-len", str(MAX_MODEL_LEN),
               "--max-num-batched-tokens", str(MAX_BATCHED_TOKENS),
               "--fault-slowdown", f"{slowdown:.4f}", "--port", str(port)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"vcp sim exited: {proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"vcp sim at {url} not healthy after {timeout_s:.0f} s")


def workload_points(args: argparse.Namespace) -> list[WorkloadPoint]:
    return [
        WorkloadPoint(p, c, max(args.min_requests, args.rounds * c), args.max_tokens, args.ramp_s)
        for p in args.prompts
        for c in args.concurrency
    ]


async def run_sides(
    urls: dict[str, str], args: argparse.Namespace
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Every point on every side, alternating sides point by point; ``repeats`` sweeps, each
    row the median over them (raw sweeps kept under ``"sweeps"``). Also the speed probes."""
    vocab = TinyModelSpec().vocab_size
    timeout = aiohttp.ClientTimeout(total=900)
    points = workload_points(args)
    sweeps: list[list[dict[str, Any]]] = [[] for _ in points]
    # A connection per request: a pooled one left idle while the other side runs can be closed
    # by the server (keep-alive timeout) just as it is reused.
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        for url in urls.values():  # warm-up: lazy initialisation, first-request costs
            warm = WorkloadPoint(64, 4, 8, 16)
            await run_point(session, url, SERVED_MODEL_NAME, warm, random.Random(0), vocab)
        probes = {"real_before": await speed_probe(session, urls["real"], vocab)}
        for sweep in range(args.repeats):
            for k, point in enumerate(points):
                row: dict[str, Any] = {}
                for side, url in urls.items():
                    rng = random.Random(args.seed + sweep)  # both sides get the same prompts
                    result = await run_point(session, url, SERVED_MODEL_NAME, point, rng, vocab)
                    row[side] = result.summary()
                sweeps[k].append(row)
                print(format_row(row, CLIENT_COLUMNS), format_row(row, ENGINE_COLUMNS), flush=True)
        probes["real_after"] = await speed_probe(session, urls["real"], vocab)
        probes["sim"] = await speed_probe(session, urls["sim"], vocab)
    return [median_row(rows) for rows in sweeps], probes


async def speed_probe(session: aiohttp.ClientSession, url: str, vocab: int) -> float:
    """The engine's own inter-token latency at batch 1 (32-token prompts, 128 tokens), in ms:
    compared with the same figure at calibration time it shows how much slower the shared
    machine runs the engine now."""
    probe = WorkloadPoint(32, 1, 8, 128)
    result = await run_point(session, url, SERVED_MODEL_NAME, probe, random.Random(1), vocab)
    return result.server_itl_ms


def median_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per side, the median of every figure over the sweeps."""
    out: dict[str, Any] = {"sweeps": rows}
    for side in rows[0]:
        out[side] = {k: float(np.median([r[side][k] for r in rows])) for k in rows[0][side]}
    return out


def ratio(sim: float, real: float) -> str:
    return f"{sim / real - 1:+.0%}" if real and not math.isnan(sim / real) else "n/a"


# (column head, summary key, format): client side, then inside the server.
CLIENT_COLUMNS = (
    ("TTFT ms", "ttft_ms_mean", ".1f"),
    ("TPOT ms", "tpot_ms_mean", ".2f"),
    ("tok/s", "throughput_tok_s", ".0f"),
)
ENGINE_COLUMNS = (
    ("engine TTFT ms", "engine_ttft_ms_mean", ".1f"),
    ("ITL ms", "server_itl_ms_mean", ".2f"),
)


def table_head(columns: tuple[tuple[str, str, str], ...], extra: tuple[str, ...] = ()) -> str:
    heads = ["prompt", "conc."]
    for name, _, _ in columns:
        heads += [f"{name} real", f"{name} sim", "Δ"]
    heads += extra
    return "| " + " | ".join(heads) + " |\n|" + "---:|" * len(heads)


def format_row(row: dict[str, Any], columns: tuple[tuple[str, str, str], ...]) -> str:
    r, s = row["real"], row["sim"]
    cells = [str(int(r["prompt_tokens"])), str(int(r["concurrency"]))]
    for _, key, fmt in columns:
        cells += [format(r[key], fmt), format(s[key], fmt), ratio(s[key], r[key])]
    if columns is ENGINE_COLUMNS:  # what the front end adds before the engine sees a request
        for side in (r, s):
            cells.append(format(side["server_ttft_ms_mean"] - side["engine_ttft_ms_mean"], ".1f"))
    return "| " + " | ".join(cells) + " |"


def print_tables(rows: list[dict[str, Any]]) -> None:
    print(table_head(CLIENT_COLUMNS))
    for row in rows:
        print(format_row(row, CLIENT_COLUMNS))
    print(table_head(ENGINE_COLUMNS, ("front end ms real", "front end ms sim")))
    for row in rows:
        print(format_row(row, ENGINE_COLUMNS))


def compare(args: argparse.Namespace) -> None:
    venv = ensure_vllm_env()
    model_dir = build_model(venv, Path(os.environ.get("TMPDIR", "/tmp")) / "vcp-fidelity-model")
    config = VllmServerConfig(model_dir=model_dir, max_num_seqs=MAX_NUM_SEQS)
    load_before = os.getloadavg()[0]
    with VllmServer(venv, config) as real:
        slowdown = 1.0
        if args.match_speed:  # other jobs on the machine slow the real engine down: follow it
            slowdown = asyncio.run(probe_real(real.base_url)) / calibration_itl_ms()
        print(f"simulator step times × {slowdown:.2f}", flush=True)
        with sim_server(free_ports(1)[0], slowdown, args.fit) as sim_url:
            rows, probes = asyncio.run(run_sides({"real": real.base_url, "sim": sim_url}, args))
    print(f"median over {args.repeats} sweep(s):")
    print_tables(rows)
    probes["calibration"] = calibration_itl_ms()
    print("batch-1 ITL (ms):", {k: round(v, 2) for k, v in probes.items()})
    report = {
        "meta": {
            "command": " ".join(["python benchmarks/sim_fidelity.py", *sys.argv[1:]]),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "cores": os.cpu_count(),
            "loadavg_1m_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "real_flags": config.cli_args(0)[2:],
            "sim_gpu_profile": {k: getattr(get_gpu("CPU"), k) for k in _PROFILE_FIELDS},
            "batch1_itl_ms": probes,
            "sim_slowdown": slowdown,
            "sim_constants_from": str(args.fit) if args.fit else "registered CPU profile",
        },
        "points": rows,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


async def probe_real(url: str) -> float:
    """Warm the real server up, then measure its batch-1 inter-token latency."""
    vocab = TinyModelSpec().vocab_size
    async with aiohttp.ClientSession() as session:
        warm = WorkloadPoint(64, 4, 8, 16)
        await run_point(session, url, SERVED_MODEL_NAME, warm, random.Random(0), vocab)
        return await speed_probe(session, url, vocab)


def calibration_itl_ms() -> float:
    """Batch-1 TPOT at 32 prompt tokens when the profile was measured (the fit's anchor)."""
    rows = json.loads(PROFILE_JSON.read_text())["decode"]
    row = next(r for r in rows if r["batch"] == 1 and r["context_tokens"] == 32)
    return float(row["server_tpot_ms"]["median"])


_PROFILE_FIELDS = ("flops", "mem_bw", "eta_mem", "eta_compute", "t0", "t_seq", "t_prefill")


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd")
    f = sub.add_parser("fit", help="fit the CPU profile to results/vllm_cpu_profile.json")
    f.add_argument("--profile", type=Path, default=PROFILE_JSON)
    f.add_argument("--iters", type=int, default=300)
    f.add_argument("--fit-out", type=Path, default=RESULTS / "cpu_profile_fit.json")
    c = sub.add_parser("compare", help="real vLLM vs vcp sim on the same workload (default)")
    for q in (p, c):
        q.add_argument("--concurrency", type=_ints, default=[1, 8, 32])
        q.add_argument("--prompts", type=_ints, default=[64, 768])
        q.add_argument("--max-tokens", type=int, default=128)
        q.add_argument("--rounds", type=int, default=4, help="requests per client per point")
        q.add_argument("--min-requests", type=int, default=16)
        q.add_argument("--ramp-s", type=float, default=0.5, help="spread of the clients' starts")
        q.add_argument("--seed", type=int, default=7)
        q.add_argument("--repeats", type=int, default=3, help="sweeps; the median is reported")
        q.add_argument(
            "--match-speed",
            action=argparse.BooleanOptionalAction,
            default=False,
            help="scale the simulator's step times by how much slower the real engine runs now "
            "than at calibration (its batch-1 inter-token latency, measured once before the "
            "sweeps); for a machine uniformly slower or faster than the calibration one",
        )
        q.add_argument("--out", type=Path, default=RESULTS / "sim_fidelity.json")
        q.add_argument(
            "--fit",
            type=Path,
            default=None,
            help="run the simulator with the constants of this fit (fit --fit-out) instead of "
            "the registered CPU profile: calibrate on the machine at hand, then compare",
        )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    fit(args) if args.cmd == "fit" else compare(args)


if __name__ == "__main__":
    main()

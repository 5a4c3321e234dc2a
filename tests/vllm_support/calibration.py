"""Replay the measured CPU workloads through the simulator: the basis of the CPU profile's fit.

How it works: ``benchmarks/results/vllm_cpu_profile.json`` holds real vLLM (CPU) figures of two
kinds: prefill time of one prompt at a time, and TPOT of B prompts of C tokens sent together.
``predict`` runs each of those workloads through a fresh pure ``SimEngine`` in virtual time (no
jitter, the real server's settings: 128-token blocks, 256 of them, ``max_num_seqs`` 32, a
2048-token budget) and puts the simulator's figure beside the measured one. ``CpuConstants``
registers a candidate CPU profile under a scratch name, ``log_loss`` scores a candidate and
``nelder_mead`` minimises it; ``benchmarks/sim_fidelity.py fit`` ties them together, and a unit
test checks the registered ``CPU`` profile against the same rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from vllm_control_plane.sim.engine import SimEngine
from vllm_control_plane.sim.profiles import get_gpu, register_gpu
from vllm_control_plane.sim.types import EngineRequest, EngineSpec

PROFILE_JSON = Path(__file__).resolve().parents[2] / "benchmarks/results/vllm_cpu_profile.json"
# The engine settings shared by both sides (the real server's are VllmServerConfig's flags).
MAX_NUM_SEQS = 32
MAX_MODEL_LEN = 1024
MAX_BATCHED_TOKENS = 2048  # vLLM's CPU default
BLOCK_SIZE = 128  # vLLM's CPU block size
REAL_KV_BLOCKS = 256  # --kv-cache-memory-bytes 64 MiB at 2 KiB per token, 128-token blocks


@dataclass(frozen=True)
class CpuConstants:
    """The fitted knobs of the CPU profile (rates are effective: efficiency factors are 1)."""

    t0: float
    mem_rate: float
    flop_rate: float
    t_seq: float
    t_prefill: float

    def register(self, name: str = "CPU-fit") -> str:
        base = get_gpu("CPU")
        register_gpu(
            replace(
                base,
                name=name,
                flops=self.flop_rate,
                mem_bw=self.mem_rate,
                eta_mem=1.0,
                eta_compute=1.0,
                t0=self.t0,
                t_seq=self.t_seq,
                t_prefill=self.t_prefill,
                aliases=(),
            ),
            replace=True,
        )
        return name


def replay(gpu: str, requests: list[EngineRequest]) -> dict[str, tuple[float, float]]:
    """Run requests that all arrive at 0 through a fresh engine; id → (first, last) token time."""
    spec = EngineSpec(
        model="tiny-llama",
        gpu=gpu,
        block_size=BLOCK_SIZE,
        max_num_seqs=MAX_NUM_SEQS,
        max_model_len=MAX_MODEL_LEN,
        max_num_batched_tokens=MAX_BATCHED_TOKENS,
        num_gpu_blocks_override=REAL_KV_BLOCKS,
        jitter=0.0,
    )
    engine = SimEngine(spec)
    for req in requests:
        engine.add_request(req, 0.0)
    now, first, last = 0.0, {}, {}
    while engine.has_unfinished():
        adv = engine.advance(now, math.inf)  # decode-only stretches in one call
        if adv.num_steps:
            now, outputs = adv.end_time, adv.finished
        else:
            res = engine.step(now)
            now, outputs = now + res.duration, res.outputs
        for out in outputs:
            if out.first_token:
                first[out.request_id] = now
            last[out.request_id] = now
    return {rid: (first[rid], last[rid]) for rid in first}


def predict(gpu: str, profile: dict[str, Any]) -> list[dict[str, Any]]:
    """The simulator's figure for every measured row of the profile, beside the measurement."""
    rows = []
    for row in profile["ttft"]:
        n = row["prompt_tokens"]
        times = replay(gpu, [EngineRequest("r", n, 1, ignore_eos=True)])
        sim = times["r"][0] * 1e3
        real = row["server_prefill_ms_mean"]
        rows.append({"what": f"prefill {n}", "real_ms": real, "sim_ms": sim})
    for row in profile["decode"]:
        b, c, out = row["batch"], row["context_tokens"], row["output_tokens"]
        reqs = [EngineRequest(f"r{i}", c, out, ignore_eos=True) for i in range(b)]
        times = replay(gpu, reqs)
        sim = 1e3 * float(np.mean([(last - first) / (out - 1) for first, last in times.values()]))
        real = row["server_tpot_ms"]["median"]
        rows.append({"what": f"TPOT batch {b} ctx {c}", "real_ms": real, "sim_ms": sim})
    return rows


def log_loss(rows: list[dict[str, Any]]) -> float:
    return sum(math.log(r["sim_ms"] / r["real_ms"]) ** 2 for r in rows)


def nelder_mead(
    f: Callable[[np.ndarray], float], x0: np.ndarray, step: float = 0.3, iters: int = 300
) -> np.ndarray:
    """Minimise ``f`` from ``x0`` (the textbook simplex method; no scipy in the project)."""
    pts = [x0.astype(float)] + [x0 + step * e for e in np.eye(len(x0))]
    vals = [f(p) for p in pts]
    for _ in range(iters):
        order = np.argsort(vals)
        pts, vals = [pts[i] for i in order], [vals[i] for i in order]
        centre = np.mean(pts[:-1], axis=0)
        reflected = centre + (centre - pts[-1])
        fr = f(reflected)
        if fr < vals[0]:
            expanded = centre + 2 * (centre - pts[-1])
            fe = f(expanded)
            pts[-1], vals[-1] = (expanded, fe) if fe < fr else (reflected, fr)
        elif fr < vals[-2]:
            pts[-1], vals[-1] = reflected, fr
        else:
            contracted = centre + 0.5 * (pts[-1] - centre)
            fc = f(contracted)
            if fc < vals[-1]:
                pts[-1], vals[-1] = contracted, fc
            else:  # shrink towards the best point
                pts = [pts[0]] + [pts[0] + 0.5 * (p - pts[0]) for p in pts[1:]]
                vals = [vals[0]] + [f(p) for p in pts[1:]]
    return pts[int(np.argmin(vals))]

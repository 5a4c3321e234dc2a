"""The simulator's CPU profile against the real vLLM (CPU) step times it was fitted to.

No vLLM needed: this replays the measured workloads of benchmarks/results/vllm_cpu_profile.json
through the pure engine (virtual time, ~2 s), so it runs in the default suite. It also pins the
two overheads the CPU profile added to the step-time model (``t_seq``, ``t_prefill``) and checks
that the engine's multi-step fast path, which folds ``t_seq`` into its per-token coefficient,
still matches stepping one beat at a time.
"""

from __future__ import annotations

import json
import math

import pytest
from tests.vllm_support.calibration import PROFILE_JSON, predict

from vllm_control_plane.sim.engine import SimEngine
from vllm_control_plane.sim.profiles import get_gpu
from vllm_control_plane.sim.timing import StepTimeModel
from vllm_control_plane.sim.types import EngineRequest, EngineSpec


def test_cpu_profile_reproduces_every_measured_step_time() -> None:
    rows = predict("CPU", json.loads(PROFILE_JSON.read_text()))
    assert len(rows) == 14
    for row in rows:
        assert row["sim_ms"] == pytest.approx(row["real_ms"], rel=0.10), row


def test_per_sequence_and_prefill_overheads() -> None:
    cpu = get_gpu("CPU")
    m = StepTimeModel("tiny-llama", cpu)
    one, two = m.stage_time(1, 100, 101, seqs=1), m.stage_time(2, 200, 202, seqs=2)
    assert two - one >= cpu.t_seq > 0  # a second sequence costs at least its own overhead
    # The same 16 tokens cost t_prefill more as one prompt chunk than as 16 decoding sequences.
    as_prefill = m.stage_time(16, 0, 16 * 17 // 2, seqs=1) + 15 * cpu.t_seq
    as_decode = m.stage_time(16, 0, 16, seqs=16)
    assert as_prefill - as_decode == pytest.approx(cpu.t_prefill, rel=0.05)
    # GPUs keep the plain roofline.
    assert get_gpu("H100").t_seq == get_gpu("H100").t_prefill == 0.0


def _token_times(spec: EngineSpec, fast: bool) -> dict[str, float]:
    engine = SimEngine(spec)
    for i in range(24):
        engine.add_request(EngineRequest(f"r{i}", 100 + 29 * i, 40 + 5 * i, ignore_eos=True), 0.0)
    now, done = 0.0, {}
    while engine.has_unfinished():
        adv = engine.advance(now, math.inf) if fast else None
        if adv is not None and adv.num_steps:
            now, outputs = adv.end_time, adv.finished
        else:
            res = engine.step(now)
            now, outputs = now + res.duration, res.outputs
        done |= {o.request_id: now for o in outputs if o.finish_reason}
    return done


def test_fast_path_matches_stepping_on_the_cpu_profile() -> None:
    spec = EngineSpec(
        model="tiny-llama", gpu="CPU", block_size=128, max_num_seqs=8, max_model_len=1024
    )
    stepped, fast = _token_times(spec, fast=False), _token_times(spec, fast=True)
    assert stepped.keys() == fast.keys() and len(stepped) == 24
    for rid, t in stepped.items():
        assert fast[rid] == pytest.approx(t, rel=1e-9), rid

"""Roofline step-time model: DESIGN §5 anchors (±25%) and TP/PP properties."""

from __future__ import annotations

import pytest

from vllm_control_plane.sim.kv_cache import num_gpu_blocks
from vllm_control_plane.sim.profiles import (
    ModelProfile,
    get_gpu,
    get_model,
    known_models,
    register_model,
)
from vllm_control_plane.sim.timing import StepTimeModel


def within(value: float, target: float, tol: float = 0.25) -> bool:
    return abs(value - target) <= tol * target


def test_kv_bytes_per_token_matches_design() -> None:
    assert get_model("llama-3-8b").kv_bytes_per_token == 128 * 1024
    assert get_model("llama-3-70b").kv_bytes_per_token == 320 * 1024


@pytest.mark.parametrize(
    ("batch", "context", "target_ms"),
    [(1, 0, 7.5), (1, 1024, 7.5), (64, 1024, 11.0)],
)
def test_llama8b_h100_decode_anchors(batch: int, context: int, target_ms: float) -> None:
    m = StepTimeModel("llama-3-8b", "H100")
    assert within(m.decode_time(batch, context) * 1e3, target_ms)


def test_llama8b_h100_throughput_at_batch_256() -> None:
    m = StepTimeModel("llama-3-8b", "H100")
    assert within(m.decode_throughput(256, 1024), 12_500)


def test_llama70b_tp4_h100_batch1() -> None:
    m = StepTimeModel("llama-3-70b", "H100", tp=4)
    assert within(m.decode_time(1, 512) * 1e3, 16.0)


def test_tp4_faster_per_step_than_tp1_for_70b() -> None:
    tp1 = StepTimeModel("llama-3-70b", "H100", tp=1)
    tp4 = StepTimeModel("llama-3-70b", "H100", tp=4)
    for batch in (1, 32, 256):
        assert tp4.decode_time(batch, 1024) < tp1.decode_time(batch, 1024)
    assert tp4.prefill_time(4096) < tp1.prefill_time(4096)


def test_pp2_more_throughput_and_kv_but_no_lower_latency() -> None:
    model, gpu = get_model("llama-3-70b"), get_gpu("H100")
    pp1 = StepTimeModel(model, gpu, tp=4, pp=1)
    pp2 = StepTimeModel(model, gpu, tp=4, pp=2)
    assert pp2.decode_time(1, 512) >= pp1.decode_time(1, 512)  # no latency gain
    assert pp2.decode_throughput(256, 1024) > pp1.decode_throughput(256, 1024)
    assert num_gpu_blocks(model, gpu, tp=4, pp=2) > num_gpu_blocks(model, gpu, tp=4, pp=1)


def test_prefill_is_compute_bound_and_grows_with_length() -> None:
    m = StepTimeModel("llama-3-8b", "H100")
    short, long = m.prefill_time(512), m.prefill_time(8192)
    assert long > 10 * short > 0
    # chunking a prompt into budget-sized pieces costs more overhead, never less
    assert m.prefill_time(8192, chunk=2048) >= long


def test_step_time_monotone_in_every_input() -> None:
    m = StepTimeModel("qwen2.5-7b", "A100-80G", tp=2)
    base = m.step_time(128, 16, 16 * 1000)
    assert m.step_time(256, 16, 16 * 1000) >= base
    assert m.step_time(128, 32, 16 * 1000) >= base
    assert m.step_time(128, 16, 16 * 4000) >= base
    assert m.step_time(0, 0, 0) == 0.0


def test_faster_gpu_is_faster() -> None:
    gpus = ("L4", "A100-80G", "H100", "H200")
    t = {g: StepTimeModel("llama-3-8b", g).decode_time(32, 1024) for g in gpus}
    assert t["L4"] > t["A100-80G"] > t["H100"] > t["H200"]


def test_lookup_is_case_insensitive_with_aliases_and_lists_known_names() -> None:
    assert get_model("meta-llama/Meta-Llama-3-8B-Instruct").name == "llama-3-8b"
    assert get_model("LLAMA-3-8B").name == "llama-3-8b"
    assert get_gpu("h100-sxm").name == "H100"
    with pytest.raises(ValueError, match="llama-3-8b"):
        get_model("gpt-9")
    with pytest.raises(ValueError, match="H100"):
        get_gpu("tpu-v9")


def test_user_defined_model_profile() -> None:
    prof = ModelProfile("my-13b-test", 13e9, 40, 40, 128, context_len=4096, aliases=("org/my-13b",))
    register_model(prof, replace=True)
    assert get_model("org/My-13B") is prof
    assert "my-13b-test" in known_models()
    assert prof.kv_bytes_per_token == 2 * 40 * 40 * 128 * 2
    m = StepTimeModel("my-13b-test", "A100-80G")
    assert m.decode_time(1, 0) > StepTimeModel("llama-3-8b", "A100-80G").decode_time(1, 0)


def test_block_counts_are_plausible() -> None:
    blocks = num_gpu_blocks(get_model("llama-3-8b"), get_gpu("H100"))
    tokens = blocks * 16
    assert 350_000 < tokens < 500_000  # ~55 GiB of KV at 128 KiB per token
    # the 70B model does not fit one 80 GB device at all
    assert num_gpu_blocks(get_model("llama-3-70b"), get_gpu("H100")) == 0
    assert num_gpu_blocks(get_model("tiny-llama"), get_gpu("CPU")) > 10_000

"""The KV block size defaults to the GPU profile's: 16 tokens on GPUs, 128 on vLLM's CPU backend.

Checked on the spec, on the engine built from it (its pool holds the CPU profile's 4 GiB of KV in
128-token blocks) and through ``vcp sim`` without ``--block-size``, where the CLI must not pin a
default of its own. ``--block-size`` / an explicit ``block_size`` still override.
"""

from __future__ import annotations

from typing import Any

import pytest
from typer.testing import CliRunner

from vllm_control_plane.cli import app
from vllm_control_plane.sim import launcher
from vllm_control_plane.sim.engine import SimEngine
from vllm_control_plane.sim.profiles import get_gpu, get_model
from vllm_control_plane.sim.types import EngineSpec


@pytest.mark.parametrize(("gpu", "expected"), [("CPU", 128), ("vllm-cpu", 128), ("H100", 16)])
def test_spec_takes_the_block_size_of_its_gpu(gpu: str, expected: int) -> None:
    assert EngineSpec(model="tiny-llama", gpu=gpu).block_size == expected
    assert get_gpu(gpu).default_block_size == expected


def test_an_explicit_block_size_wins() -> None:
    assert EngineSpec(model="tiny-llama", gpu="CPU", block_size=16).block_size == 16


def test_an_unknown_gpu_fails_when_the_spec_is_built() -> None:
    with pytest.raises(ValueError, match=r"unknown GPU 'H900'; known: .*CPU"):
        EngineSpec(gpu="H900")


def test_cpu_engine_pools_its_kv_space_in_128_token_blocks() -> None:
    engine = SimEngine(EngineSpec(model="tiny-llama", gpu="CPU", max_model_len=1024))
    assert engine.block_size == 128
    per_block = 128 * get_model("tiny-llama").kv_bytes_per_token
    assert engine.num_gpu_blocks == int(get_gpu("CPU").kv_cache_bytes // per_block)


def _spec_served_by(monkeypatch: pytest.MonkeyPatch, *args: str) -> EngineSpec:
    """The spec ``vcp sim ARGS`` would serve (the serving loop replaced by a recorder)."""
    served: list[Any] = []

    async def record(fleet: launcher.SimFleet, announce: Any) -> None:
        served.extend(server.spec for server in fleet.servers)

    monkeypatch.setattr(launcher, "serve_until_signal", record)
    result = CliRunner().invoke(app, ["sim", *args])
    assert result.exit_code == 0, result.output
    (spec,) = served
    return spec


def test_vcp_sim_on_cpu_uses_128_token_blocks_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = ("--model", "tiny-llama", "--gpu", "CPU")
    assert _spec_served_by(monkeypatch, *cpu).block_size == 128
    assert _spec_served_by(monkeypatch, "--gpu", "H100").block_size == 16
    assert _spec_served_by(monkeypatch, *cpu, "--block-size", "32").block_size == 32

"""User-defined model and GPU profiles: ``define_model``/``define_gpu``, the fleet file's
``models:``/``gpus:`` sections and ``vcp sim``'s inline ``--model-*``/``--gpu-*`` flags (the
served end to end in ``test_cli_sim.py``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from vllm_control_plane.cli import app
from vllm_control_plane.sim.engine import SimEngine
from vllm_control_plane.sim.fleet import (
    FleetConfigError,
    GPUDefinition,
    ModelDefinition,
    parse_fleet,
)
from vllm_control_plane.sim.profiles import (
    GPUProfile,
    ModelProfile,
    define_gpu,
    define_model,
    get_gpu,
    get_model,
)

SHAPE_13B: dict[str, Any] = {"params": 13e9, "num_layers": 40, "num_kv_heads": 40,
                             "head_dim": 128}  # fmt: skip


def test_define_model_registers_once_and_refuses_other_shapes() -> None:
    prof = define_model("user-13b", aliases=("org/User-13B",), **SHAPE_13B, context_len=2048)
    assert get_model("ORG/user-13b") is prof and prof.kv_bytes_per_token == 2 * 40 * 40 * 128 * 2
    assert define_model("user-13b", **SHAPE_13B, context_len=2048) is prof  # idempotent
    with pytest.raises(ValueError, match=r"already defined model profile 'user-13b' in a "
                       r"different shape: num_layers 41 \(it has 40\)"):  # fmt: skip
        define_model("User-13B", **{**SHAPE_13B, "num_layers": 41})
    with pytest.raises(ValueError, match="name and aliases name different profiles"):
        define_model("user-13b", aliases=("llama-3-8b",), **SHAPE_13B)
    # A built-in: the fields given must match it (those not given are the built-in's).
    shape_8b = {"params": 8.03e9, "num_layers": 32, "num_kv_heads": 8, "head_dim": 128}
    assert define_model("meta-llama/Meta-Llama-3-8B", **shape_8b) is get_model("llama-3-8b")
    with pytest.raises(ValueError, match=r"built-in model profile 'llama-3-8b'.*params 1.3e\+10 "
                       r"\(it has 8.03e\+09\)"):  # fmt: skip
        define_model("llama-3-8b", **{**shape_8b, "params": 13e9})
    with pytest.raises(ValueError, match="12 query heads are not a multiple of 8 KV heads"):
        define_model("user-bad", **{**shape_8b, "num_heads": 12}, register=False)
    with pytest.raises(ValueError, match="needs params > 0"):
        define_model("user-bad", **{**shape_8b, "params": 0})


def test_define_gpu_and_check_only() -> None:
    gpu = define_gpu("user-gpu", flops=400e12, mem_bw=2e12, mem_bytes=48e9, register=False)
    with pytest.raises(ValueError, match="unknown GPU"):
        get_gpu("user-gpu")  # register=False only checks
    assert gpu.t0 == GPUProfile("x", 1, 1, 1).t0  # unspecified constants: the defaults
    with pytest.raises(ValueError, match=r"built-in GPU profile 'H100'.*mem_bytes 8e\+10"):
        define_gpu("h100-sxm", flops=989e12, mem_bw=3.35e12, mem_bytes=80e9)


def test_fleet_definitions_cover_every_profile_field() -> None:
    """A field added to a profile dataclass must be settable from the fleet file too."""
    for profile, definition in ((ModelProfile, ModelDefinition), (GPUProfile, GPUDefinition)):
        fields = {f.name for f in dataclasses.fields(profile)} - {"name"}
        assert set(definition.model_fields) == fields, definition.__name__


FLEET_PROFILES: dict[str, Any] = {
    "models": {
        "fleet-13b": {
            **SHAPE_13B,
            "context_len": "2048",
            "hidden_size": 5120,
            "aliases": ["org/Fleet-13B"],
        }
    },
    "gpus": {
        "fleet-gpu": {
            "flops": 400e12,
            "mem_bw": "2e12",
            "mem_bytes": 48e9,
            "t0": 0.002,
            "default_max_num_seqs": 64,
        }
    },
    "servers": [{"name": "a", "model": "org/fleet-13b", "gpu": "FLEET-GPU"}],
}


def test_fleet_models_and_gpus_sections() -> None:
    cfg = parse_fleet(FLEET_PROFILES)  # "2e12" as YAML 1.1 reads `2e12`: a string, coerced
    with pytest.raises(ValueError):
        get_model("fleet-13b")  # validation registers nothing
    servers = cfg.build_servers()
    cfg.build_servers()  # registering again is a no-op
    model, gpu = get_model("fleet-13b"), get_gpu("fleet-gpu")
    assert (model.params, model.num_layers, model.context_len, model.hidden) == (
        13e9, 40, 2048, 5120)  # fmt: skip
    assert (gpu.flops, gpu.mem_bw, gpu.t0, gpu.default_max_num_seqs) == (400e12, 2e12, 0.002, 64)
    engine = SimEngine(servers[0].spec)
    assert engine.max_model_len == 2048 and engine.max_num_seqs == 64
    free = 48e9 * 0.9 - 13e9 * 2 - gpu.reserved_bytes  # weights in BF16
    assert engine.num_gpu_blocks == int(free // (16 * model.kv_bytes_per_token))


def _fleet(models: dict | None = None, gpus: dict | None = None, **server: Any) -> dict:
    return {"models": models or {}, "gpus": gpus or {}, "servers": [{"name": "a", **server}]}


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (_fleet({"m": {**SHAPE_13B, "layers": 4}}), "models.m.layers: unknown key"),
        (_fleet({"m": {"params": 1e9, "num_layers": 4, "head_dim": 64}}),
         "models.m.num_kv_heads: Field required"),
        (_fleet({"m": {**SHAPE_13B, "params": -1}}), "models.m.params: Input should be greater"),
        (_fleet({"m": {**SHAPE_13B, "num_layers": 4.5}}), "models.m.num_layers:"),
        (_fleet({"m": {**SHAPE_13B, "context_len": 1}}), "models.m.context_len:"),
        (_fleet({"m": {**SHAPE_13B, "num_heads": 60}}),
         "models.m: 60 query heads are not a multiple of 40 KV heads"),
        (_fleet({"llama-3-70b": {**SHAPE_13B}}),
         "models.llama-3-70b: model 'llama-3-70b' clashes with the built-in model profile "
         "'llama-3-70b' in a different shape: params 1.3e+10 (it has 7.06e+10)"),
        (_fleet({"m": {**SHAPE_13B, "aliases": ["Qwen/Qwen2.5-7B"]}}),
         "models.m: model 'm' clashes with the built-in model profile 'qwen2.5-7b'"),
        (_fleet({"llama-3-8b": {**SHAPE_13B, "aliases": ["qwen2.5-7b"]}}),
         "models.llama-3-8b: model 'llama-3-8b': its name and aliases name different profiles "
         "(llama-3-8b, qwen2.5-7b)"),
        (_fleet({"m": {**SHAPE_13B, "aliases": ["N"]}, "n": SHAPE_13B}),
         "models.n: 'n' already names models.m"),
        (_fleet(model="no-such-model"),
         "servers[0].model: unknown model profile 'no-such-model'; known: "),
        (_fleet(gpus={"g": {"flops": 1e12, "mem_bw": 1e12, "mem_bytes": 1e9}}, gpu="h"),
         "servers[0].gpu: unknown GPU profile 'h'; known: "),
        (_fleet(gpus={"g": {"flops": 1e12, "mem_bw": 1e12}}), "gpus.g.mem_bytes: Field required"),
        (_fleet(gpus={"g": {"flops": 1e12, "mem_bw": 1e12, "mem_bytes": 1e9, "eta_mem": 2}}),
         "gpus.g.eta_mem: Input should be less than or equal to 1"),
        (_fleet(gpus={"L4": {"flops": 1e12, "mem_bw": 1e12, "mem_bytes": 1e9}}),
         "gpus.L4: GPU 'L4' clashes with the built-in GPU profile 'L4'"),
    ],
)  # fmt: skip
def test_fleet_profile_errors_name_the_path(data: dict, fragment: str) -> None:
    with pytest.raises(FleetConfigError) as e:
        parse_fleet(data)
    assert fragment in str(e.value)


INLINE_13B = ["--model-params", "13e9", "--model-layers", "40", "--model-kv-heads", "40",
              "--model-head-dim", "128"]  # fmt: skip


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--model", "cli-13b", "--model-params", "13e9", "--model-layers", "40"],
         ["error: --model cli-13b: an inline model profile needs --model-params, "
          "--model-layers, --model-kv-heads, --model-head-dim (missing: --model-kv-heads, "
          "--model-head-dim)"]),
        (["--model", "cli-13b", "--model-context-len", "2048"],
         ["(missing: --model-params, --model-layers, --model-kv-heads, --model-head-dim)"]),
        (["--model", "llama-3-8b", *INLINE_13B],
         ["error: --model llama-3-8b: model 'llama-3-8b' clashes with the built-in model profile "
          "'llama-3-8b' in a different shape: params 1.3e+10 (it has 8.03e+09); num_layers 40 "
          "(it has 32); num_kv_heads 40 (it has 8)"]),
        (["--model", "cli-13b", *INLINE_13B, "--model-num-heads", "50"],
         ["50 query heads are not a multiple of 40 KV heads"]),
        (["--gpu", "cli-gpu", "--gpu-flops", "4e14"],
         ["error: --gpu cli-gpu: an inline GPU profile needs --gpu-flops, --gpu-mem-bw, "
          "--gpu-mem-bytes (missing: --gpu-mem-bw, --gpu-mem-bytes)"]),
        (["--gpu", "H100", "--gpu-flops", "4e14", "--gpu-mem-bw", "2e12", "--gpu-mem-bytes",
          "48e9"],
         ["clashes with the built-in GPU profile 'H100'", "flops 4e+14 (it has 9.89e+14)"]),
    ],
)  # fmt: skip
def test_vcp_sim_inline_profile_errors(args: list[str], fragments: list[str]) -> None:
    result = CliRunner().invoke(app, ["sim", "--port", "0", *args])
    assert result.exit_code == 2, result.output
    for fragment in fragments:
        assert fragment in result.output
    with pytest.raises(ValueError):
        get_model("cli-13b")  # nothing registered on failure


def test_vcp_sim_invalid_models_section_exits_with_the_path(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(
        "models:\n  llama-3-8b: {params: 13e9, num_layers: 40, num_kv_heads: 40, head_dim: 128}\n"
        "  mine: {params: 1e9, num_layers: 4, num_kv_heads: 4, head_dim: 64, vocab: 10}\n"
        "servers:\n  - {name: a, model: mine}\n"
    )
    result = CliRunner().invoke(app, ["sim", "--fleet", str(fleet)])
    assert result.exit_code == 2
    assert "models.mine.vocab: unknown key" in result.output
    # Profile clashes are checked once the file's fields are valid.
    fleet.write_text(fleet.read_text().replace(", vocab: 10", ""))
    result = CliRunner().invoke(app, ["sim", "--fleet", str(fleet)])
    assert result.exit_code == 2
    assert "models.llama-3-8b: model 'llama-3-8b' clashes with the built-in" in result.output

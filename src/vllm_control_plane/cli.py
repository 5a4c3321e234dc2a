"""The ``vcp`` command line: one typer app, a subcommand per job."""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer

from vllm_control_plane import __version__
from vllm_control_plane.bench.cli import bench_app

app = typer.Typer(
    name="vcp",
    help="vLLM control plane: simulator, gateway and benchmarks for fleets of vLLM servers.",
    no_args_is_help=True,
    add_completion=False,
)

app.add_typer(bench_app, name="bench")


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


# Inline profile definitions of `vcp sim`: profile field -> flag, and the fields a definition needs.
_MODEL_FLAGS = {
    "params": "--model-params",
    "num_layers": "--model-layers",
    "num_kv_heads": "--model-kv-heads",
    "head_dim": "--model-head-dim",
    "num_heads": "--model-num-heads",
    "hidden_size": "--model-hidden-size",
    "context_len": "--model-context-len",
    "dtype_bytes": "--model-dtype-bytes",
}
_MODEL_REQUIRED = ("params", "num_layers", "num_kv_heads", "head_dim")
_GPU_FLAGS = {"flops": "--gpu-flops", "mem_bw": "--gpu-mem-bw", "mem_bytes": "--gpu-mem-bytes"}
_MPANEL = "Inline model profile (define --model NAME)"
_GPANEL = "Inline GPU profile (define --gpu NAME)"


def _define_inline(
    kind: str, option: str, name: str, values: dict[str, object], flags: dict[str, str],
    required: tuple[str, ...],
) -> None:  # fmt: skip
    """Register the profile ``--model``/``--gpu NAME`` defined by flags (none given: nothing)."""
    from vllm_control_plane.sim.profiles import define_gpu, define_model

    given = {f: v for f, v in values.items() if v is not None}
    if not given:
        return
    missing = [flags[f] for f in required if f not in given]
    if missing:
        needed = ", ".join(flags[f] for f in required)
        raise ValueError(f"{option} {name}: an inline {kind} profile needs {needed} "
                         f"(missing: {', '.join(missing)})")  # fmt: skip
    define = define_model if kind == "model" else define_gpu
    try:
        define(name, **given)
    except ValueError as e:
        raise ValueError(f"{option} {name}: {e}") from None


@app.command()
def sim(
    model: str = typer.Option(
        "llama-3-8b", help="Model profile (e.g. llama-3-8b, llama-3-70b), or a name to define."
    ),
    gpu: str = typer.Option(
        "H100", help="GPU profile (H100, H200, A100-80G, L4, ...), or a name to define."
    ),
    model_params: float | None = typer.Option(
        None, min=1.0, help="Parameter count, e.g. 13e9.", rich_help_panel=_MPANEL
    ),
    model_layers: int | None = typer.Option(None, min=1, rich_help_panel=_MPANEL),
    model_kv_heads: int | None = typer.Option(None, min=1, rich_help_panel=_MPANEL),
    model_head_dim: int | None = typer.Option(None, min=1, rich_help_panel=_MPANEL),
    model_num_heads: int | None = typer.Option(
        None, min=1, help="Query heads (default: hidden/head dim).", rich_help_panel=_MPANEL
    ),
    model_hidden_size: int | None = typer.Option(
        None, min=1, help="Residual width (default: heads x head_dim).", rich_help_panel=_MPANEL
    ),
    model_context_len: int | None = typer.Option(
        None, min=2, help="Default max_model_len (default 4096).", rich_help_panel=_MPANEL
    ),
    model_dtype_bytes: int | None = typer.Option(
        None, min=1, max=8, help="Bytes per weight / KV value (default 2).", rich_help_panel=_MPANEL
    ),
    gpu_flops: float | None = typer.Option(
        None, min=1.0, help="Dense FLOP/s per device, e.g. 989e12.", rich_help_panel=_GPANEL
    ),
    gpu_mem_bw: float | None = typer.Option(
        None, min=1.0, help="Memory bytes/s per device, e.g. 3.35e12.", rich_help_panel=_GPANEL
    ),
    gpu_mem_bytes: float | None = typer.Option(
        None, min=1.0, help="Device memory in bytes, e.g. 80e9.", rich_help_panel=_GPANEL
    ),
    tp: int = typer.Option(1, min=1, help="Tensor-parallel size."),
    pp: int = typer.Option(1, min=1, help="Pipeline-parallel size."),
    host: str = typer.Option("127.0.0.1", help="Address to bind."),
    port: int = typer.Option(8000, min=0, max=65535, help="Port to bind (0: a free one)."),
    max_model_len: int | None = typer.Option(None, min=2, help="Context length."),
    max_num_seqs: int | None = typer.Option(None, min=1, help="Max running requests."),
    max_num_batched_tokens: int | None = typer.Option(None, min=1, help="Token budget/step."),
    gpu_memory_utilization: float = typer.Option(0.9, min=0.01, max=1.0),
    block_size: int | None = typer.Option(
        None, min=1, help="KV block size in tokens (default: the GPU's, 16; 128 on CPU)."
    ),
    served_model_name: str | None = typer.Option(None, help="Model name on the API."),
    seed: int = typer.Option(0, help="Seed for output lengths, jitter and fault dice."),
    time_scale: float = typer.Option(
        1.0, min=0.0, help="Wall seconds per model second (1 real time, 0 as fast as possible)."
    ),
    legacy_metrics: bool = typer.Option(False, help="Serve pre-0.10 vLLM metric names."),
    max_chunks_per_second: float | None = typer.Option(
        None, min=0.0, help="SSE chunk budget for coalescing (default 10000; 0: no limit)."
    ),
    fleet: Path | None = typer.Option(
        None, help="Fleet YAML: run several servers; other server and profile flags are ignored."
    ),
    fault_error_rate: float = typer.Option(0.0, min=0.0, max=1.0, help="Share of requests failed."),
    fault_error_status: int = typer.Option(500, min=400, max=599, help="Status of those errors."),
    fault_hang: bool = typer.Option(False, help="Accept requests, never answer."),
    fault_crash_after_tokens: int | None = typer.Option(
        None, min=0, help="Cut connections after N streamed tokens."
    ),
    fault_crash_exit: bool = typer.Option(False, help="With crash: exit the process instead."),
    fault_slowdown: float = typer.Option(1.0, min=0.001, help="Step-time multiplier."),
    fault_unhealthy: bool = typer.Option(False, help="/health answers 503."),
    fault_midstream_error_after_tokens: int | None = typer.Option(
        None, min=0, help="Error frame after N streamed tokens."
    ),
    fault_startup_delay: float = typer.Option(0.0, min=0.0, help="Seconds before binding."),
) -> None:
    """Serve vLLM's OpenAI API from simulated engines (one server, or a fleet file).

    --model NAME with --model-params, --model-layers, --model-kv-heads and --model-head-dim
    defines a model profile on the spot (--gpu NAME with --gpu-flops, --gpu-mem-bw and
    --gpu-mem-bytes a GPU); a name that is already a profile must match its shape.
    """
    from vllm_control_plane.sim.faults import FaultConfig
    from vllm_control_plane.sim.fleet import FleetConfigError, load_fleet
    from vllm_control_plane.sim.launcher import SimFleet, SimServer, serve_until_signal
    from vllm_control_plane.sim.types import EngineSpec

    try:
        if fleet is not None:
            servers = load_fleet(fleet).build_servers()
        else:
            faults = FaultConfig(
                error_rate=fault_error_rate,
                error_status=fault_error_status,
                hang=fault_hang,
                crash_after_tokens=fault_crash_after_tokens,
                crash_exit=fault_crash_exit,
                slowdown=fault_slowdown,
                unhealthy=fault_unhealthy,
                midstream_error_after_tokens=fault_midstream_error_after_tokens,
                startup_delay_s=fault_startup_delay,
            )
            model_shape = {
                "params": model_params,
                "num_layers": model_layers,
                "num_kv_heads": model_kv_heads,
                "head_dim": model_head_dim,
                "num_heads": model_num_heads,
                "hidden_size": model_hidden_size,
                "context_len": model_context_len,
                "dtype_bytes": model_dtype_bytes,
            }
            gpu_shape = {"flops": gpu_flops, "mem_bw": gpu_mem_bw, "mem_bytes": gpu_mem_bytes}
            _define_inline("GPU", "--gpu", gpu, gpu_shape, _GPU_FLAGS, tuple(_GPU_FLAGS))
            _define_inline("model", "--model", model, model_shape, _MODEL_FLAGS, _MODEL_REQUIRED)
            spec = EngineSpec(
                model=model,
                gpu=gpu,
                tp=tp,
                pp=pp,
                gpu_memory_utilization=gpu_memory_utilization,
                block_size=block_size,
                max_num_seqs=max_num_seqs,
                max_num_batched_tokens=max_num_batched_tokens,
                max_model_len=max_model_len,
                seed=seed,
                served_model_name=served_model_name,
            )
            options = (
                {} if max_chunks_per_second is None else {"max_chunks_per_s": max_chunks_per_second}
            )
            server = SimServer(
                spec, host, port, faults, time_scale, legacy_metrics, name="sim", **options
            )
            servers = [server]
        sim_fleet = SimFleet(servers)
    except (FleetConfigError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None

    def announce(line: str) -> None:
        typer.echo(line)

    try:
        asyncio.run(serve_until_signal(sim_fleet, announce))
    except (OSError, ValueError) as e:  # port in use, unknown model/GPU profile, ...
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None


@app.command()
def serve(
    config: Path | None = typer.Option(
        None, "--config", "-c", help="Cluster YAML (default: an embedded simulated fleet)."
    ),
    host: str | None = typer.Option(None, help="Address to bind (default: server.host)."),
    port: int | None = typer.Option(
        None, min=0, max=65535, help="Port to bind (default: server.port, 8080)."
    ),
) -> None:
    """Run the OpenAI-compatible gateway (no --config: over an embedded simulated fleet)."""
    from vllm_control_plane.gateway.cli import run

    status = run(config, host, port, typer.echo)
    if status:
        raise typer.Exit(status)


if __name__ == "__main__":  # pragma: no cover
    app()

"""Fleet files: several simulated vLLM servers described in one YAML document.

How it works: the file is parsed with ``yaml.safe_load`` and validated by strict pydantic models
(unknown keys, bad types and out-of-range values fail with the key's path, e.g.
``servers[1].faults.error_rate``). Each entry becomes an ``EngineSpec`` plus serving options, and
:meth:`FleetConfig.build_servers` turns the lot into ``SimServer`` objects for
:class:`~vllm_control_plane.sim.launcher.SimFleet`. Example::

    time_scale: 1.0            # default for every server
    servers:
      - name: a
        port: 8001
        model: llama-3-8b
        gpu: H100
      - name: b
        port: 8002
        model: llama-3-70b
        tp: 4
        faults: {error_rate: 0.05, error_status: 503}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from vllm_control_plane.sim.faults import FaultConfig
from vllm_control_plane.sim.types import EngineSpec
from vllm_control_plane.yaml_config import read_yaml, validate

__all__ = ["FleetConfig", "FleetConfigError", "ServerConfig", "load_fleet", "parse_fleet"]


class FleetConfigError(ValueError):
    """The fleet file is invalid; the message lists each problem with its key path."""


class ServerConfig(BaseModel):
    """One simulated server of a fleet."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    """Unique name; shown in logs and used to look the server up."""
    host: str = "127.0.0.1"
    """Address to bind."""
    port: int = Field(0, ge=0, le=65535)
    """Port to bind; 0 picks a free one."""
    model: str = "llama-3-8b"
    """Model profile name (case-insensitive; Hugging Face ids work as aliases)."""
    gpu: str = "H100"
    """GPU profile name."""
    tp: int = Field(1, ge=1)
    """Tensor-parallel size."""
    pp: int = Field(1, ge=1)
    """Pipeline-parallel size."""
    served_model_name: str | None = None
    """Model name on the API (default: ``model``)."""
    max_model_len: int | None = Field(None, ge=2)
    """Context length (default: the model's)."""
    max_num_seqs: int | None = Field(None, ge=1)
    """Running-batch cap (default: vLLM's for the GPU)."""
    max_num_batched_tokens: int | None = Field(None, ge=1)
    """Per-step token budget (default: vLLM's for the GPU)."""
    gpu_memory_utilization: float = Field(0.9, gt=0.0, le=1.0)
    """Share of GPU memory vLLM may use."""
    block_size: int | None = Field(None, ge=1)
    """KV block size in tokens (default: the GPU profile's — 16, or 128 for CPU as vLLM-CPU)."""
    enable_prefix_caching: bool = True
    """Automatic prefix caching."""
    num_gpu_blocks_override: int | None = Field(None, ge=1)
    """Force the KV pool size (blocks)."""
    jitter: float = Field(0.02, ge=0.0)
    """Relative std-dev of step-time noise."""
    mean_output_tokens: float = Field(256.0, gt=0.0)
    """Mean natural output length when EOS is allowed."""
    seed: int = 0
    """Seed for output lengths, jitter and fault dice."""
    time_scale: float | None = Field(None, ge=0.0)
    """Wall seconds per model second (default: the fleet's)."""
    legacy_metrics: bool | None = None
    """Serve pre-0.10 metric names (default: the fleet's)."""
    faults: FaultConfig = Field(default_factory=FaultConfig)
    """Faults to inject from the start."""

    def to_spec(self) -> EngineSpec:
        return EngineSpec(
            model=self.model,
            gpu=self.gpu,
            tp=self.tp,
            pp=self.pp,
            gpu_memory_utilization=self.gpu_memory_utilization,
            block_size=self.block_size,
            max_num_seqs=self.max_num_seqs,
            max_num_batched_tokens=self.max_num_batched_tokens,
            max_model_len=self.max_model_len,
            enable_prefix_caching=self.enable_prefix_caching,
            num_gpu_blocks_override=self.num_gpu_blocks_override,
            jitter=self.jitter,
            mean_output_tokens=self.mean_output_tokens,
            seed=self.seed,
            served_model_name=self.served_model_name,
        )


class FleetConfig(BaseModel):
    """A fleet file: defaults plus the list of servers."""

    model_config = ConfigDict(extra="forbid")

    time_scale: float = Field(1.0, ge=0.0)
    """Default wall seconds per model second (1 = real time, 0 = as fast as possible)."""
    legacy_metrics: bool = False
    """Default for serving pre-0.10 metric names."""
    servers: list[ServerConfig] = Field(min_length=1)
    """The servers (at least one)."""

    @model_validator(mode="after")
    def _unique(self) -> FleetConfig:
        names = [s.name for s in self.servers]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate server names: {', '.join(dupes)}")
        bound = [(s.host, s.port) for s in self.servers if s.port]
        clash = sorted({f"{h}:{p}" for h, p in bound if bound.count((h, p)) > 1})
        if clash:
            raise ValueError(f"several servers on the same address: {', '.join(clash)}")
        return self

    def build_servers(self) -> list[Any]:
        """``SimServer`` objects (not started) for every entry."""
        from vllm_control_plane.sim.launcher import SimServer  # launcher imports the engine

        return [
            SimServer(
                s.to_spec(),
                host=s.host,
                port=s.port,
                faults=s.faults,
                time_scale=self.time_scale if s.time_scale is None else s.time_scale,
                legacy_metrics=(
                    self.legacy_metrics if s.legacy_metrics is None else s.legacy_metrics
                ),
                name=s.name,
            )
            for s in self.servers
        ]


def parse_fleet(data: Any, source: str = "fleet file") -> FleetConfig:
    """Validate already-parsed YAML/JSON data (raises :class:`FleetConfigError`)."""
    if not isinstance(data, dict):
        raise FleetConfigError(f"{source}: expected a mapping with a `servers` list")
    return validate(FleetConfig, data, source, FleetConfigError)


def load_fleet(path: str | Path) -> FleetConfig:
    """Read and validate a fleet YAML file."""
    return parse_fleet(read_yaml(path, FleetConfigError, "fleet file"), str(path))

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

User-defined profiles: a ``models:`` mapping (name → ``params``, ``num_layers``,
``num_kv_heads``, ``head_dim``, optional ``num_heads``, ``hidden_size``, ``vocab_size``,
``context_len``, ``dtype_bytes``, ``aliases``) and a ``gpus:`` mapping (name → ``flops``,
``mem_bw``, ``mem_bytes``, optional roofline constants) define profiles that ``model:`` / ``gpu:``
can name. They are checked at load without touching the registry (a name that already names a
profile of another shape fails with its path, e.g. ``models.llama-3-8b``; so does a server whose
``model``/``gpu`` names no profile) and registered by :meth:`FleetConfig.build_servers`
(:func:`~vllm_control_plane.sim.profiles.define_model`: idempotent, so loading a file twice is
fine).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from vllm_control_plane.sim.faults import FaultConfig
from vllm_control_plane.sim.profiles import (
    GPUProfile,
    ModelProfile,
    define_gpu,
    define_model,
    get_gpu,
    get_model,
    known_gpus,
    known_models,
)
from vllm_control_plane.sim.types import EngineSpec
from vllm_control_plane.yaml_config import read_yaml, validate

__all__ = [
    "FleetConfig",
    "FleetConfigError",
    "GPUDefinition",
    "ModelDefinition",
    "ServerConfig",
    "load_fleet",
    "parse_fleet",
]


class FleetConfigError(ValueError):
    """The fleet file is invalid; the message lists each problem with its key path."""


class _Definition(BaseModel):
    """A profile given in the file: only the fields written down are passed on (the profile's
    own defaults fill the rest, and only those are compared with a profile of the same name)."""

    model_config = ConfigDict(extra="forbid")

    aliases: list[str] = Field(default_factory=list)
    """Other names for it (case-insensitive), e.g. a Hugging Face id."""

    def given(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in type(self).model_fields
                if f != "aliases" and f in self.model_fields_set
                and getattr(self, f) is not None}  # fmt: skip


class ModelDefinition(_Definition):
    """A user-defined model profile (``models:`` entry); fields as :class:`ModelProfile`."""

    params: float = Field(gt=0)
    """Parameter count (e.g. ``13e9``)."""
    num_layers: int = Field(ge=1)
    num_kv_heads: int = Field(ge=1)
    head_dim: int = Field(ge=1)
    num_heads: int | None = Field(None, ge=1)
    """Query heads (default: ``hidden_size // head_dim``, else ``num_kv_heads``)."""
    hidden_size: int | None = Field(None, ge=1)
    """Residual width (default: ``num_heads * head_dim``); drives all-reduce volume."""
    vocab_size: int | None = Field(None, ge=1)
    context_len: int | None = Field(None, ge=2)
    """max_position_embeddings: the default ``max_model_len`` (default 4096)."""
    dtype_bytes: int | None = Field(None, ge=1, le=8)
    """Bytes per weight and KV element (default 2: BF16)."""

    @model_validator(mode="after")
    def _shape(self) -> ModelDefinition:
        ModelProfile("check", **self.given())  # the dataclass's own checks
        heads = self.num_heads or (self.hidden_size // self.head_dim if self.hidden_size else 0)
        if heads and heads % self.num_kv_heads:
            raise ValueError(
                f"{heads} query heads are not a multiple of {self.num_kv_heads} KV heads"
            )
        return self


class GPUDefinition(_Definition):
    """A user-defined GPU profile (``gpus:`` entry); fields as :class:`GPUProfile`."""

    flops: float = Field(gt=0)
    """Dense BF16 FLOP/s per device (e.g. ``989e12``)."""
    mem_bw: float = Field(gt=0)
    """Memory bytes/s per device (e.g. ``3.35e12``)."""
    mem_bytes: float = Field(gt=0)
    """Device memory in bytes (e.g. ``80e9``)."""
    t0: float | None = Field(None, ge=0)
    t_seq: float | None = Field(None, ge=0)
    t_prefill: float | None = Field(None, ge=0)
    t_frontend: float | None = Field(None, ge=0)
    t_frontend_token: float | None = Field(None, ge=0)
    t_frontend_active: float | None = Field(None, ge=0)
    eta_mem: float | None = Field(None, gt=0, le=1)
    eta_compute: float | None = Field(None, gt=0, le=1)
    link_bw: float | None = Field(None, gt=0)
    link_latency: float | None = Field(None, ge=0)
    reserved_bytes: float | None = Field(None, ge=0)
    kv_cache_bytes: float | None = Field(None, gt=0)
    default_max_num_batched_tokens: int | None = Field(None, ge=1)
    default_max_num_seqs: int | None = Field(None, ge=1)
    default_block_size: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _check(self) -> GPUDefinition:
        GPUProfile("check", **self.given())
        return self


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
    """A fleet file: defaults, user-defined profiles and the list of servers."""

    model_config = ConfigDict(extra="forbid")

    models: dict[str, ModelDefinition] = Field(default_factory=dict)
    """User-defined model profiles, by name."""
    gpus: dict[str, GPUDefinition] = Field(default_factory=dict)
    """User-defined GPU profiles, by name."""

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

    def profile_problems(self) -> list[str]:
        """``path: why`` for each profile definition that clashes with a known profile or with
        another one of the file, and each server naming no profile. Registers nothing."""
        problems: list[str] = []
        for section, field, kind, defs, define, get, known in (
            ("models", "model", "model", self.models, define_model, get_model, known_models),
            ("gpus", "gpu", "GPU", self.gpus, define_gpu, get_gpu, known_gpus),
        ):
            owner: dict[str, str] = {}  # lower-cased name or alias -> defining entry
            for name, d in defs.items():
                for n in (name, *d.aliases):
                    key = n.strip().lower()
                    if key in owner:
                        problems.append(f"{section}.{name}: {n!r} already names "
                                        f"{section}.{owner[key]}")  # fmt: skip
                    owner.setdefault(key, name)
                try:
                    define(name, aliases=tuple(d.aliases), register=False, **d.given())
                except ValueError as e:
                    problems.append(f"{section}.{name}: {e}")
            for i, s in enumerate(self.servers):
                wanted = getattr(s, field)
                if wanted.strip().lower() in owner:
                    continue
                try:
                    get(wanted)
                except ValueError:
                    names = ", ".join(sorted({*known(), *defs}))
                    problems.append(f"servers[{i}].{field}: unknown {kind} profile "
                                    f"{wanted!r}; known: {names}")  # fmt: skip
        return problems

    def register_profiles(self) -> None:
        """Register the file's ``gpus:`` and ``models:`` (idempotent)."""
        for name, g in self.gpus.items():
            define_gpu(name, aliases=tuple(g.aliases), **g.given())
        for name, m in self.models.items():
            define_model(name, aliases=tuple(m.aliases), **m.given())

    def build_servers(self) -> list[Any]:
        """``SimServer`` objects (not started) for every entry, after registering the file's
        own profiles."""
        from vllm_control_plane.sim.launcher import SimServer  # launcher imports the engine

        self.register_profiles()
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
    config = validate(FleetConfig, data, source, FleetConfigError)
    problems = config.profile_problems()
    if problems:
        raise FleetConfigError(f"{source} is invalid:\n  " + "\n  ".join(problems))
    return config


def load_fleet(path: str | Path) -> FleetConfig:
    """Read and validate a fleet YAML file."""
    return parse_fleet(read_yaml(path, FleetConfigError, "fleet file"), str(path))

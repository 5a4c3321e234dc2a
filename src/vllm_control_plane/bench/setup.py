"""The two inputs of a run besides the workload: the fleet, and the configuration under test.

* :class:`InstanceGroup` / :class:`FleetSpec` — which engines (model, GPU, TP, count); each
  becomes one simulated engine and one :class:`~vllm_control_plane.types.ExecutionInstance`.
* :class:`BenchConfig` — a scheduling policy, a routing strategy and the admission knobs.

Baselines are honest about what their systems do: a baseline router (DESIGN §6) runs with the
``fifo`` policy, no concurrency cap (``max_concurrent_requests`` = 10⁶) and no saturation gate,
so every request is forwarded on arrival to vLLM's own unbounded FCFS queue — exactly what
production-stack, SGLang's router, llm-d's picker and AIBrix do; none of them holds requests
back. The project's configurations keep requests in the control plane's queue until an instance
has room (``max_concurrent_requests`` per instance) and its scraped engine queue is short
(``CoreLimits.saturation_waiting``), so the policy's order and admission have something to act on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from vllm_control_plane.core.concurrency import AdaptiveConcurrency
from vllm_control_plane.core.limits import CoreLimits
from vllm_control_plane.core.policies import POLICIES
from vllm_control_plane.core.routing import BASELINES, normalize_name
from vllm_control_plane.sim.profiles import get_gpu
from vllm_control_plane.sim.types import EngineSpec
from vllm_control_plane.types import ExecutionInstance

UNBOUNDED = 1_000_000  # max_concurrent_requests of a router with no admission control


@dataclass(frozen=True)
class InstanceGroup:
    """``count`` identical engine servers."""

    name: str
    count: int = 1
    model: str = "llama-3-8b"
    gpu: str = "H100"
    tp: int = 1
    max_model_len: int | None = None

    def label(self) -> str:
        tp = f" TP{self.tp}" if self.tp > 1 else ""
        return f"{self.count}× {self.gpu}{tp} {self.model}"


@dataclass(frozen=True)
class FleetSpec:
    groups: tuple[InstanceGroup, ...]

    def members(self) -> list[tuple[str, InstanceGroup]]:
        """(instance id, its group) for every engine, ids like ``h100-0``."""
        return [(f"{g.name}-{k}", g) for g in self.groups for k in range(g.count)]

    def engine_spec(self, group: InstanceGroup, index: int, seed: int) -> EngineSpec:
        return EngineSpec(
            model=group.model,
            gpu=group.gpu,
            tp=group.tp,
            max_model_len=group.max_model_len,
            seed=seed * 1009 + index,
        )

    def instance(self, iid: str, group: InstanceGroup, max_concurrent: int) -> ExecutionInstance:
        gpu = get_gpu(group.gpu)
        return ExecutionInstance(
            iid,
            model_name=group.model,
            tensor_parallel_size=group.tp,
            gpu_count=group.tp,
            gpu_type=gpu.name,
            gpu_memory_gb=gpu.mem_bytes / 1024**3,
            max_concurrent_requests=max_concurrent,
        )

    def label(self) -> str:
        return ", ".join(g.label() for g in self.groups)

    def size(self) -> int:
        return sum(g.count for g in self.groups)


@dataclass(frozen=True)
class BenchConfig:
    """A configuration under test: policy + strategy + admission knobs."""

    name: str
    policy: str = "fifo"
    strategy: str = "round_robin"
    baseline: bool = False
    # Per-instance cap on requests in flight, per A100-80G of capacity (scaled by the
    # instance's capacity, at least 4); None with baseline=True: unbounded.
    concurrency_per_capacity: float | None = None
    limits: CoreLimits = field(default_factory=CoreLimits)

    def max_concurrent(self, inst_capacity: float) -> int:
        if self.concurrency_per_capacity is None:
            return UNBOUNDED if self.baseline else ExecutionInstance.max_concurrent_requests
        return max(4, round(self.concurrency_per_capacity * inst_capacity))

    def describe(self) -> dict[str, object]:
        lim = self.limits
        return {
            "name": self.name,
            "policy": self.policy,
            "strategy": self.strategy,
            "baseline": self.baseline,
            "concurrency_per_capacity": self.concurrency_per_capacity,
            "adaptive_concurrency": lim.adaptive_concurrency is not None,
            "saturation_waiting": lim.saturation_waiting,
            "saturation_kv": lim.saturation_kv,
            "max_queued": lim.max_queued,
        }


def instance_capacity(group: InstanceGroup) -> float:
    """Serving capacity relative to one A100-80G: GPUs × HBM bandwidth (the routers' notion)."""
    return group.tp * get_gpu(group.gpu).mem_bw / get_gpu("A100-80G").mem_bw


# Baselines forward everything at once: no cap, no saturation gate, fifo (their systems have no
# queue of their own); bounded queue size is irrelevant since nothing waits in it.
BASELINE_LIMITS = CoreLimits(saturation_waiting=10**9, saturation_kv=1.0, max_queued=10**7)


def baseline(strategy: str) -> BenchConfig:
    """The benchmark configuration of a baseline router (see the module doc)."""
    name = normalize_name(strategy)
    if name not in BASELINES:
        raise ValueError(f"{strategy!r} is not a baseline; valid: {', '.join(BASELINES)}")
    return BenchConfig(name, "fifo", name, baseline=True, limits=BASELINE_LIMITS)


def baselines(names: Sequence[str] = BASELINES) -> list[BenchConfig]:
    return [baseline(n) for n in names]


PROJECT_BEST = "vcp_best"


def project_best() -> BenchConfig:
    """The project's best configuration, the same for every scenario (docs/bench.md says why).

    ``priority`` orders the control plane's queue by priority (with aging); ``predictive``
    places each request where its predicted latency (own prefill backlog, cached prefix, decode
    at the current batch) is lowest, and parks it for a busy instance holding its prefix when the
    wait is predicted to cost less than the lost cache; adaptive concurrency
    (core/concurrency.py) holds requests with loose SLOs in the queue while the engines' TPOT
    nears the tightest SLO they serve, under a ceiling of 256 requests in flight per A100-80G of
    capacity (vLLM's default ``max_num_seqs``).
    """
    return BenchConfig(
        PROJECT_BEST,
        "priority",
        "predictive",
        concurrency_per_capacity=256,
        limits=CoreLimits(adaptive_concurrency=AdaptiveConcurrency()),
    )


def resolve_config(
    name: str, policy: str | None, strategy: str | None, concurrency: float | None
) -> BenchConfig:
    """``vcp bench run``'s configuration: a named one, optionally with overrides.

    Unknown names raise ``ValueError`` listing the valid ones.
    """
    key = name.strip().lower().replace("-", "_")
    if key != PROJECT_BEST and key not in BASELINES:
        valid = ", ".join((PROJECT_BEST, *BASELINES))
        raise ValueError(f"unknown configuration {name!r}; valid: {valid}")
    cfg = project_best() if key == PROJECT_BEST else baseline(key)
    if policy is None and strategy is None and concurrency is None:
        return cfg
    pol = (policy or cfg.policy).strip().lower().replace("-", "_")
    if pol not in POLICIES:
        raise ValueError(f"unknown scheduling policy {policy!r}; valid: {', '.join(POLICIES)}")
    strat = normalize_name(strategy) if strategy else cfg.strategy
    cap = concurrency if concurrency is not None else cfg.concurrency_per_capacity
    label = f"{pol}+{strat}" + (f"@{cap:g}" if cap is not None else "")
    return replace(cfg, name=label, policy=pol, strategy=strat, concurrency_per_capacity=cap)


def with_history(config: BenchConfig, requests: int) -> BenchConfig:
    """A copy whose core keeps every finished record (the runner reads them at the end)."""
    limits = replace(config.limits, history_size=max(config.limits.history_size, requests + 1))
    return replace(config, limits=limits)

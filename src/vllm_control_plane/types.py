"""Public data types of the control plane (the seed guide's vocabulary, DESIGN §2).

These are plain dataclasses and enums with no behaviour beyond validation and derived fields, so
the pure core, the asyncio runtime, the gateway and the benchmark can all share them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class RequestPriority(enum.IntEnum):
    """Lower value = more urgent."""

    CRITICAL = 0
    HIGH = 1
    NORMAL = 2
    LOW = 3
    BACKGROUND = 4

    @classmethod
    def parse(cls, value: str | int | RequestPriority) -> RequestPriority:
        """Accept a member, its int value or its (case-insensitive) name."""
        if isinstance(value, RequestPriority):
            return value
        if isinstance(value, int):
            return cls(value)
        try:
            return cls[str(value).strip().upper()]
        except KeyError:
            valid = ", ".join(m.name.lower() for m in cls)
            raise ValueError(f"unknown priority {value!r}; valid: {valid}") from None


class RequestStatus(str, enum.Enum):
    """Request lifecycle: PENDING → QUEUED → SCHEDULED → RUNNING → one terminal state."""

    PENDING = "pending"
    QUEUED = "queued"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    REJECTED = "rejected"
    TIMEOUT = "timeout"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset(
    {
        RequestStatus.COMPLETED,
        RequestStatus.FAILED,
        RequestStatus.CANCELLED,
        RequestStatus.REJECTED,
        RequestStatus.TIMEOUT,
    }
)


class ParallelismType(str, enum.Enum):
    """Kinds of model parallelism an instance can use; short aliases as in the seed guide."""

    TENSOR_PARALLEL = "tp"
    PIPELINE_PARALLEL = "pp"
    DATA_PARALLEL = "dp"
    EXPERT_PARALLEL = "ep"
    HYBRID = "hybrid"  # tensor and pipeline parallel at once
    TP = "tp"
    PP = "pp"
    DP = "dp"
    EP = "ep"

    @classmethod
    def parse(cls, value: str | ParallelismType) -> ParallelismType:
        """Accept a member, its value or a member name, case-insensitively ("tp", "TP",
        "tensor_parallel"); anything else is a ``ValueError`` listing the valid values."""
        if isinstance(value, ParallelismType):
            return value
        text = str(value).strip()
        try:
            return cls(text.lower())
        except ValueError:
            pass
        try:
            return cls[text.upper()]
        except KeyError:
            valid = ", ".join(m.value for m in cls)  # aliases share values: each listed once
            raise ValueError(f"unknown parallelism_hint {value!r}; valid: {valid}") from None


@dataclass
class ExecutionInstance:
    """One engine server (a vLLM process, possibly spanning several GPUs).

    Static fields describe the deployment; the fields after ``# live`` are kept up to date by the
    control plane (health checks, scraped ``/metrics``, its own in-flight accounting).
    """

    instance_id: str
    host: str = "localhost"
    port: int = 8000
    model_name: str = "llama-3-8b"
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    data_parallel_size: int = 1
    gpu_count: int = 1
    gpu_memory_gb: float = 80.0
    gpu_type: str | None = None  # e.g. "H100", "A100-80G", "L4"; None: inferred from memory
    max_concurrent_requests: int = 256  # vLLM's default max_num_seqs on GPUs
    cost_per_gpu_hour: float | None = None  # None: the default price of gpu_type
    weight: float | None = None  # weighted round robin; None: derived from capacity
    scheme: str = "http"
    api_key: str | None = None  # bearer token for the engine server, if it wants one
    served_model_name: str | None = None  # name the engine serves; defaults to model_name
    labels: dict[str, str] = field(default_factory=dict)

    # live
    is_healthy: bool = True
    is_available: bool = True  # False while draining / unregistering
    active_requests: int = 0  # dispatched by us and not finished
    avg_latency_ms: float = 0.0  # EWMA of end-to-end latency of requests served here
    num_requests_running: int = 0  # scraped from the engine's /metrics
    num_requests_waiting: int = 0  # scraped
    kv_cache_usage: float = 0.0  # scraped, 0..1
    total_requests: int = 0
    failed_requests: int = 0

    def __post_init__(self) -> None:
        if not self.instance_id:
            raise ValueError("instance_id must be a non-empty string")
        for name in (
            "tensor_parallel_size",
            "pipeline_parallel_size",
            "data_parallel_size",
            "gpu_count",
            "max_concurrent_requests",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be in 1..65535, got {self.port}")
        if self.gpu_memory_gb <= 0:
            raise ValueError(f"gpu_memory_gb must be > 0, got {self.gpu_memory_gb}")

    @property
    def current_load(self) -> float:
        """Share of the instance's concurrency budget in use, 0..1."""
        return min(1.0, self.active_requests / self.max_concurrent_requests)

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    @property
    def api_model_name(self) -> str:
        return self.served_model_name or self.model_name

    @property
    def has_capacity(self) -> bool:
        return self.active_requests < self.max_concurrent_requests

    @property
    def parallelism_types(self) -> frozenset[ParallelismType]:
        kinds: set[ParallelismType] = set()
        if self.tensor_parallel_size > 1:
            kinds.add(ParallelismType.TENSOR_PARALLEL)
        if self.pipeline_parallel_size > 1:
            kinds.add(ParallelismType.PIPELINE_PARALLEL)
        if self.data_parallel_size > 1:
            kinds.add(ParallelismType.DATA_PARALLEL)
        if self.tensor_parallel_size > 1 and self.pipeline_parallel_size > 1:
            kinds.add(ParallelismType.HYBRID)
        return frozenset(kinds)


DEFAULT_PROMPT_TOKENS = 32  # DESIGN §2: a request with no prompt means a prompt of this length


@dataclass
class RequestMetadata:
    """One inference request plus what the control plane needs to schedule it.

    A request without ``prompt`` or ``messages`` is valid: it stands for a prompt of
    ``prompt_tokens`` tokens (default :data:`DEFAULT_PROMPT_TOKENS`); the simulator runs it as is
    and a real server is sent a synthetic prompt of that length.
    """

    request_id: str
    user_id: str | None = None
    priority: RequestPriority = RequestPriority.NORMAL
    slo_deadline_ms: float | None = None  # end-to-end deadline from submission
    max_tokens: int | None = None
    model_name: str | None = None  # None: any model the fleet serves (first registered)
    cost_budget: float | None = None  # USD
    parallelism_hint: ParallelismType | None = None
    prompt: str | None = None  # completions-style prompt
    messages: list[dict[str, Any]] | None = None  # chat-style messages
    prompt_tokens: int | None = None  # prompt length when no text is given (or a known count)
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] | None = None
    ignore_eos: bool = False
    stream: bool = False
    ttft_slo_ms: float | None = None
    tpot_slo_ms: float | None = None
    session_id: str | None = None
    tenant: str | None = None
    extra_body: dict[str, Any] = field(default_factory=dict)  # passed through to the engine

    def __post_init__(self) -> None:
        if not isinstance(self.request_id, str) or not self.request_id:
            raise ValueError("request_id must be a non-empty string")
        self.priority = RequestPriority.parse(self.priority)
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.prompt_tokens is not None and self.prompt_tokens < 1:
            raise ValueError(f"prompt_tokens must be >= 1, got {self.prompt_tokens}")
        for name in ("slo_deadline_ms", "ttft_slo_ms", "tpot_slo_ms"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if self.cost_budget is not None and self.cost_budget < 0:
            raise ValueError(f"cost_budget must be >= 0, got {self.cost_budget}")
        if self.prompt is not None and self.messages is not None:
            raise ValueError("give either prompt or messages, not both")
        if self.parallelism_hint is not None:
            self.parallelism_hint = ParallelismType.parse(self.parallelism_hint)

    @property
    def affinity_key(self) -> str | None:
        """The key sticky routing hashes on: session first, then user."""
        return self.session_id or self.user_id

    @property
    def has_slo(self) -> bool:
        return any(
            v is not None for v in (self.slo_deadline_ms, self.ttft_slo_ms, self.tpot_slo_ms)
        )


@dataclass(frozen=True)
class SchedulingDecision:
    """Why a request went where it went: the policy's and the strategy's reasons and scores."""

    request_id: str
    instance_id: str
    policy: str
    strategy: str
    reason: str
    scores: dict[str, float] = field(default_factory=dict)  # candidate instance id -> score
    predicted_ttft_ms: float | None = None
    predicted_latency_ms: float | None = None
    estimated_cost: float | None = None
    decided_at: float = 0.0  # core time (seconds) of the decision


@dataclass
class PerformanceMetrics:
    """Aggregate metrics, every field computed from what happened (latencies in ms)."""

    total_requests: int = 0
    completed_requests: int = 0
    failed_requests: int = 0
    cancelled_requests: int = 0
    rejected_requests: int = 0
    timeout_requests: int = 0
    in_flight_requests: int = 0
    avg_latency_ms: float = 0.0
    p50_latency_ms: float = 0.0
    p95_latency_ms: float = 0.0
    p99_latency_ms: float = 0.0
    avg_ttft_ms: float = 0.0
    p50_ttft_ms: float = 0.0
    p95_ttft_ms: float = 0.0
    p99_ttft_ms: float = 0.0
    avg_tpot_ms: float = 0.0
    p50_tpot_ms: float = 0.0
    p95_tpot_ms: float = 0.0
    p99_tpot_ms: float = 0.0
    requests_per_second: float = 0.0
    tokens_per_second: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    slo_requests: int = 0  # requests that carried an SLO and reached a terminal state
    slo_violations: int = 0
    slo_compliance_rate: float = 1.0  # met / slo_requests (1.0 when none carried an SLO)
    slo_compliance_by_priority: dict[str, float] = field(default_factory=dict)
    total_cost: float = 0.0  # USD
    cost_per_token: float = 0.0  # USD per generated token
    retries: int = 0

"""The control plane's YAML configuration: strict pydantic models shared by CLI, gateway, library.

How it works: :func:`load_config` reads a YAML file and validates it into a
:class:`ControlPlaneConfig`. Every model forbids unknown keys, so a typo fails at startup with its
path (``instances[1].prot: unknown key``) instead of being silently ignored; range checks and
name checks (policy, routing strategy, GPU names of ``prices``) fail the same way.
:meth:`ControlPlaneConfig.manager_kwargs` and :meth:`ControlPlaneConfig.execution_instances` map
the file onto the library's objects, so the gateway and a library user get the same behaviour from
the same file. With no file, :func:`default_config` describes an embedded simulated fleet.

Secrets (admin token, tenant API keys) are ``SecretStr``: they never appear in reprs, logs or
the admin API's view of the config.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from vllm_control_plane.backends.base import Timeouts
from vllm_control_plane.core.concurrency import AdaptiveConcurrency
from vllm_control_plane.core.limits import CoreLimits
from vllm_control_plane.core.rate_limit import RateLimit
from vllm_control_plane.runtime.circuit import CircuitConfig
from vllm_control_plane.runtime.monitor import MonitorConfig
from vllm_control_plane.runtime.retry_budget import RetryBudgetConfig
from vllm_control_plane.sim.fleet import ServerConfig
from vllm_control_plane.types import ExecutionInstance, RequestPriority
from vllm_control_plane.yaml_config import read_yaml, validate

__all__ = [
    "AdminSettings",
    "ConfigError",
    "ControlPlaneConfig",
    "InstanceConfig",
    "LimitsConfig",
    "MonitorSettings",
    "RateLimitSettings",
    "ServerSettings",
    "SimulatedInstanceConfig",
    "TenantConfig",
    "default_config",
    "load_config",
    "parse_config",
]

PriorityName = Literal["critical", "high", "normal", "low", "background"]
MiB = 1024 * 1024
_TENANT_NAME = re.compile(r"[A-Za-z0-9_.-]+")


class ConfigError(ValueError):
    """The configuration is invalid; the message names each offending key and why."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class ServerSettings(_Strict):
    """Where the gateway listens and its HTTP-level bounds."""

    host: str = "127.0.0.1"
    """Address to bind (``vcp serve --host`` overrides)."""
    port: int = Field(8080, ge=0, le=65535)
    """Port to bind; 0 picks a free one (``vcp serve --port`` overrides)."""
    max_body_bytes: int = Field(4 * MiB, ge=1024)
    """Largest accepted request body; larger ones get 413."""
    shutdown_grace_s: float = Field(30.0, ge=0.0)
    """On shutdown, in-flight requests get this long to finish before they are cancelled."""
    retry_after_s: int = Field(1, ge=1)
    """``Retry-After`` seconds sent with 429 (queue full, a tenant's concurrency limit) and 503
    (no healthy instance); a tenant over its request rate gets the bucket's own wait."""


class AdminSettings(_Strict):
    """The admin API's bearer token (from the file, else from an environment variable), an
    optional read-only token for ``/metrics``, and which public routes need a credential."""

    token: SecretStr | None = None
    """Token for ``/admin`` (``Authorization: Bearer <token>``). Without one, the admin API
    refuses every call."""
    token_env: str = "VCP_ADMIN_TOKEN"
    """Environment variable read when ``token`` is not set."""
    metrics_token: SecretStr | None = None
    """A token accepted on ``/metrics`` only (give it to Prometheus instead of the admin
    token)."""
    metrics_token_env: str = "VCP_METRICS_TOKEN"
    """Environment variable read when ``metrics_token`` is not set."""
    protect_metrics: bool = False
    """``/metrics`` requires the admin or the metrics token. Off by default (Prometheus habit):
    the series name instances, models, load and cost, so turn it on when the port is reachable
    by people who should not see them."""
    protect_pages: bool = False
    """``/openapi.json`` and ``/dashboard`` require the admin token (as a bearer token, or as the
    password of HTTP Basic auth so that a browser can open the dashboard)."""

    def resolve_token(self, environ: dict[str, str] | None = None) -> str | None:
        """The effective admin token (file first, then the environment), or None."""
        return _secret(self.token, self.token_env, environ)

    def resolve_metrics_token(self, environ: dict[str, str] | None = None) -> str | None:
        """The effective metrics token (file first, then the environment), or None."""
        return _secret(self.metrics_token, self.metrics_token_env, environ)

    @model_validator(mode="after")
    def _protection_needs_a_token(self) -> AdminSettings:
        # a protected route nobody can open is a misconfiguration, not a safe default
        if self.protect_metrics and not (self.resolve_token() or self.resolve_metrics_token()):
            raise ValueError(
                "protect_metrics is on but neither token nor metrics_token is set (nor "
                f"{self.token_env} / {self.metrics_token_env}): nobody could read /metrics"
            )
        if self.protect_pages and not self.resolve_token():
            raise ValueError(
                f"protect_pages is on but no admin token is set (token or {self.token_env}): "
                "nobody could open /dashboard or /openapi.json"
            )
        return self


def _secret(value: SecretStr | None, env: str, environ: dict[str, str] | None) -> str | None:
    if value is not None and value.get_secret_value():
        return value.get_secret_value()
    return (environ if environ is not None else os.environ).get(env, "") or None


class InstanceConfig(_Strict):
    """One real engine server (vLLM or any OpenAI-compatible server); fields as in
    :class:`~vllm_control_plane.types.ExecutionInstance`."""

    instance_id: str = Field(min_length=1)
    """Unique id (shown in headers, metrics and the admin API)."""
    url: str | None = None
    """Base URL, e.g. ``http://10.0.0.5:8000``; an alternative to ``scheme``/``host``/``port``."""
    host: str = "localhost"
    port: int = Field(8000, ge=1, le=65535)
    scheme: Literal["http", "https"] = "http"
    model_name: str = Field("llama-3-8b", min_length=1)
    """The model's name in the fleet (clients ask for it; ``/v1/models`` lists it)."""
    served_model_name: str | None = None
    """The name the engine serves, if different (sent to the engine)."""
    tensor_parallel_size: int = Field(1, ge=1)
    pipeline_parallel_size: int = Field(1, ge=1)
    data_parallel_size: int = Field(1, ge=1)
    gpu_count: int | None = Field(None, ge=1)
    """GPUs used; default TP × PP × DP."""
    gpu_memory_gb: float = Field(80.0, gt=0)
    gpu_type: str | None = None
    """E.g. ``H100``, ``A100-80G``, ``L4`` (prices and the performance model use it)."""
    max_concurrent_requests: int = Field(256, ge=1)
    """Requests dispatched to this instance at once; more wait in the control plane's queue
    (default: vLLM's own ``max_num_seqs`` on GPUs)."""
    cost_per_gpu_hour: float | None = Field(None, ge=0)
    """USD per GPU-hour; default from ``prices`` (then the built-in price of ``gpu_type``)."""
    weight: float | None = Field(None, gt=0)
    """Weighted round robin weight; default derived from capacity."""
    api_key: SecretStr | None = None
    """Bearer token the engine server expects, if any."""
    labels: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _split_url(self) -> InstanceConfig:
        if self.url is not None:
            parts = urlsplit(self.url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"url must look like http://host:port, got {self.url!r}")
            self.scheme = parts.scheme  # type: ignore[assignment]
            self.host = parts.hostname
            self.port = parts.port or (443 if parts.scheme == "https" else 80)
        return self

    def to_instance(self, prices: dict[str, float] | None = None) -> ExecutionInstance:
        """The library object for this entry (price filled in from ``prices``)."""
        gpus = self.gpu_count or (
            self.tensor_parallel_size * self.pipeline_parallel_size * self.data_parallel_size
        )
        return ExecutionInstance(
            instance_id=self.instance_id,
            host=self.host,
            port=self.port,
            scheme=self.scheme,
            model_name=self.model_name,
            served_model_name=self.served_model_name,
            tensor_parallel_size=self.tensor_parallel_size,
            pipeline_parallel_size=self.pipeline_parallel_size,
            data_parallel_size=self.data_parallel_size,
            gpu_count=gpus,
            gpu_memory_gb=self.gpu_memory_gb,
            gpu_type=self.gpu_type,
            max_concurrent_requests=self.max_concurrent_requests,
            cost_per_gpu_hour=_price(self.cost_per_gpu_hour, self.gpu_type, prices),
            weight=self.weight,
            api_key=self.api_key.get_secret_value() if self.api_key else None,
            labels=dict(self.labels),
        )


class SimulatedInstanceConfig(ServerConfig):
    """An embedded simulated vLLM server (``vcp sim`` in-process), started with the gateway.

    Every field of a ``vcp sim`` fleet-file entry (``name``, ``model``, ``gpu``, ``tp``, ``pp``,
    ``faults``, …) plus what the control plane needs to schedule on it. ``name`` is the
    instance id.
    """

    time_scale: float | None = Field(1.0, ge=0.0)
    """Wall seconds per model second (1 = real time)."""
    max_concurrent_requests: int = Field(256, ge=1)
    cost_per_gpu_hour: float | None = Field(None, ge=0)
    weight: float | None = Field(None, gt=0)
    labels: dict[str, str] = Field(default_factory=dict)

    def to_instance(
        self, host: str, port: int, prices: dict[str, float] | None = None
    ) -> ExecutionInstance:
        """The library object for this server once it listens on ``host:port``."""
        from vllm_control_plane.sim.profiles import get_gpu

        gpu = get_gpu(self.gpu)
        return ExecutionInstance(
            instance_id=self.name,
            host=host,
            port=port,
            model_name=self.served_model_name or self.model,
            tensor_parallel_size=self.tp,
            pipeline_parallel_size=self.pp,
            gpu_count=self.tp * self.pp,
            gpu_memory_gb=round(gpu.mem_bytes / 1024**3, 1),
            gpu_type=gpu.name,
            max_concurrent_requests=self.max_concurrent_requests,
            cost_per_gpu_hour=_price(self.cost_per_gpu_hour, gpu.name, prices),
            weight=self.weight,
            labels={"simulated": "true", **self.labels},
        )


class AdaptiveConcurrencySettings(_Strict):
    """Per-instance concurrency limits that adapt to keep TPOT inside the tightest SLO served
    (core/concurrency.py); only requests with looser (or no) TPOT SLOs are held back."""

    target: float = Field(0.8, gt=0)
    """Keep the smoothed observed/SLO TPOT ratio at or below this."""
    backoff: float = Field(0.85, gt=0, lt=1)
    """Multiplicative cut of the limit on a breach."""
    increase: float = Field(2.0, gt=0)
    """Growth per limit's worth of healthy completions while the limit binds."""
    min_limit: int = Field(2, ge=1)
    """Floor of an instance's limit."""

    def to_core(self) -> AdaptiveConcurrency:
        return AdaptiveConcurrency(
            target=self.target, backoff=self.backoff, increase=self.increase,
            min_limit=self.min_limit,
        )  # fmt: skip


class LimitsConfig(_Strict):
    """Queue bounds, retries and dispatch thresholds (mapped onto the core's ``CoreLimits``)."""

    max_queued: int = Field(10_000, ge=1)
    """Queued requests of all priorities; when full the lowest priority is shed first (429)."""
    max_queued_per_priority: dict[PriorityName, int] = Field(default_factory=dict)
    """Optional cap per priority, e.g. ``{background: 100}``."""
    max_retries: int = Field(2, ge=0)
    """Re-dispatches of a request that failed before its first token."""
    retry_backoff_s: float = Field(0.05, ge=0)
    aging_s: float = Field(30.0, gt=0)
    """``priority`` policy: waiting this long promotes a request one level."""
    saturation_waiting: int = Field(16, ge=0)
    """No dispatch to an engine whose own waiting queue is longer than this."""
    saturation_kv: float = Field(0.98, gt=0, le=1)
    """No dispatch to an engine whose KV-cache usage is above this."""
    hard_deadlines: bool = False
    """Make every ``X-SLO-Deadline-Ms`` hard: the request ends with 504 when it passes,
    queued or running (a client may ask per request with ``X-Hard-Deadline``)."""
    history_size: int = Field(10_000, ge=1)
    """Finished requests whose status stays queryable."""
    drain_timeout_s: float = Field(30.0, ge=0)
    """A removed instance's running requests get this long to finish."""
    adaptive_concurrency: AdaptiveConcurrencySettings | None = None
    """Off unless given (``{}`` turns it on with the defaults)."""

    def to_core(self) -> CoreLimits:
        per_priority = {
            RequestPriority.parse(k): v for k, v in self.max_queued_per_priority.items()
        }
        return CoreLimits(
            max_queued=self.max_queued,
            max_queued_per_priority=per_priority,
            max_retries=self.max_retries,
            retry_backoff_s=self.retry_backoff_s,
            aging_s=self.aging_s,
            saturation_waiting=self.saturation_waiting,
            saturation_kv=self.saturation_kv,
            hard_deadlines=self.hard_deadlines,
            history_size=self.history_size,
            adaptive_concurrency=(
                self.adaptive_concurrency.to_core() if self.adaptive_concurrency else None
            ),
        )


class MonitorSettings(_Strict):
    """Health checks and ``/metrics`` scraping of the engines."""

    enabled: bool = True
    health_interval_s: float = Field(1.0, gt=0)
    scrape_interval_s: float = Field(0.5, gt=0)
    unhealthy_threshold: int = Field(2, ge=1)
    """Consecutive failed checks before an instance leaves rotation."""
    healthy_threshold: int = Field(2, ge=1)
    """Consecutive good checks before it returns."""
    health_timeout_s: float = Field(2.0, gt=0)
    """A health check not answered within this many seconds has failed."""

    def to_runtime(self) -> MonitorConfig:
        return MonitorConfig(
            health_interval=self.health_interval_s,
            scrape_interval=self.scrape_interval_s,
            unhealthy_threshold=self.unhealthy_threshold,
            healthy_threshold=self.healthy_threshold,
            health_timeout=self.health_timeout_s,
        )


class TimeoutSettings(_Strict):
    """Per-request timeouts towards the engines (docs/reliability.md has what each one ends in)."""

    connect_s: float | None = Field(5.0, gt=0)
    """TCP connect to the engine; a refused or timed-out connect is retried elsewhere."""
    first_token_s: float | None = Field(300.0, gt=0)
    """From sending the request to the first token (covers the engine's own queue + prefill)."""
    idle_s: float | None = Field(120.0, gt=0)
    """Longest gap between two stream chunks."""

    def to_runtime(self, health_s: float) -> Timeouts:
        return Timeouts(
            connect=self.connect_s,
            first_token=self.first_token_s,
            idle=self.idle_s,
            health=health_s,
        )


class CircuitSettings(_Strict):
    """Passive failure detection: per-instance circuit breakers."""

    failure_threshold: int = Field(5, ge=0)
    """Consecutive failed attempts that open the circuit (0 disables passive detection)."""
    open_s: float = Field(1.0, gt=0)
    """Cooldown before the first half-open probe."""
    max_open_s: float = Field(30.0, gt=0)
    """Cap of the cooldown, which doubles after every failed probe."""
    probe_timeout_s: float = Field(10.0, gt=0)
    """A probe that has not finished by then counts as failed."""

    def to_runtime(self) -> CircuitConfig:
        return CircuitConfig(**self.model_dump())


class RetryBudgetSettings(_Strict):
    """Retries allowed so that a sick fleet is not stormed."""

    ratio: float = Field(0.2, ge=0)
    """Retries allowed per request submitted in the window."""
    floor: int = Field(10, ge=0)
    """Retries always allowed per window."""
    window_s: float = Field(10.0, gt=0)
    """How far back "recent" reaches."""

    def to_runtime(self) -> RetryBudgetConfig:
        return RetryBudgetConfig(ratio=self.ratio, floor=self.floor, window_s=self.window_s)


class RateLimitSettings(_Strict):
    """A tenant's admission limits; over them its requests get 429 with ``Retry-After``."""

    requests_per_s: float | None = Field(None, gt=0)
    """Sustained request rate (a token bucket's refill per second)."""
    burst: int | None = Field(None, ge=1)
    """Requests that may arrive at once after a quiet spell (the bucket's size); default: the
    rate rounded up, at least 1."""
    max_concurrent: int | None = Field(None, ge=1)
    """Requests of the tenant inside the gateway at once (queued or running)."""

    @model_validator(mode="after")
    def _check(self) -> RateLimitSettings:
        if self.burst is not None and self.requests_per_s is None:
            raise ValueError("burst needs requests_per_s")
        if self.requests_per_s is None and self.max_concurrent is None:
            raise ValueError("set requests_per_s and/or max_concurrent")
        return self

    def to_core(self) -> RateLimit:
        return RateLimit(self.requests_per_s, self.burst, self.max_concurrent)


class TenantConfig(_Strict):
    """A client organisation: its API keys and what its requests may ask for."""

    name: str = Field(min_length=1, max_length=64)
    """Letters, digits, ``_``, ``.``, ``-``: the name namespaces the tenant's request ids."""
    api_keys: list[SecretStr] = Field(min_length=1)
    """Keys accepted as ``Authorization: Bearer <key>`` for this tenant."""
    default_priority: PriorityName = "normal"
    """Priority of requests without ``X-Priority``."""
    max_priority: PriorityName = "critical"
    """The most urgent priority this tenant may ask for (more urgent asks are lowered to it)."""
    cost_budget: float | None = Field(None, ge=0)
    """Default per-request budget in USD (``X-Cost-Budget`` may lower it, not raise it)."""
    rate_limit: RateLimitSettings | None = None
    """Requests per second (token bucket), burst and concurrent requests; none by default."""

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not _TENANT_NAME.fullmatch(name):
            raise ValueError(
                f"{name!r}: use letters, digits, '_', '.' or '-' (the name prefixes request ids)"
            )
        return name


class ControlPlaneConfig(_Strict):
    """A whole ``cluster.yaml``."""

    server: ServerSettings = Field(default_factory=ServerSettings)
    admin: AdminSettings = Field(default_factory=AdminSettings)
    scheduling_policy: str = "adaptive"
    """fifo, priority, slo_aware, cost_optimized or adaptive."""
    routing_strategy: str = "predictive"
    """Any registered strategy (predictive, load_balanced, round_robin, locality, …); the
    default is the benchmark's winner (docs/benchmarks.md, "Policy benchmark")."""
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    monitor: MonitorSettings = Field(default_factory=MonitorSettings)
    timeouts: TimeoutSettings = Field(default_factory=TimeoutSettings)
    circuit: CircuitSettings = Field(default_factory=CircuitSettings)
    retry_budget: RetryBudgetSettings = Field(default_factory=RetryBudgetSettings)
    tenants: list[TenantConfig] = Field(default_factory=list)
    """With at least one tenant, client routes require an API key (401 without)."""
    prices: dict[str, float] = Field(default_factory=dict)
    """USD per GPU-hour by GPU type, e.g. ``{H100: 2.49}``; instances without a price use it."""
    instances: list[InstanceConfig] = Field(default_factory=list)
    simulated: list[SimulatedInstanceConfig] = Field(default_factory=list)
    """Simulated servers started in-process with the gateway."""
    seed: int = 0
    """Seed of the core's random choices (random routing, tie-breaks)."""

    @field_validator("scheduling_policy")
    @classmethod
    def _policy(cls, name: str) -> str:
        from vllm_control_plane.core.policies import POLICIES

        return _known(name, POLICIES)

    @field_validator("routing_strategy")
    @classmethod
    def _strategy(cls, name: str) -> str:
        from vllm_control_plane.core.routing import STRATEGIES

        return _known(name, STRATEGIES)

    @field_validator("prices")
    @classmethod
    def _prices(cls, prices: dict[str, float]) -> dict[str, float]:
        return _canonical_prices(prices)

    @model_validator(mode="after")
    def _check(self) -> ControlPlaneConfig:
        ids = [i.instance_id for i in self.instances] + [s.name for s in self.simulated]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"duplicate instance ids: {', '.join(dupes)}")
        names = [t.name for t in self.tenants]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate tenant names: {', '.join(dupes)}")
        keys = [k.get_secret_value() for t in self.tenants for k in t.api_keys]
        if len(keys) != len(set(keys)):
            raise ValueError("an API key is listed more than once (keys must name one tenant)")
        return self

    def manager_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :class:`~vllm_control_plane.manager.ControlPlaneManager`."""
        return {
            "scheduling_policy": self.scheduling_policy,
            "routing_strategy": self.routing_strategy,
            "enable_monitoring": self.monitor.enabled,
            "limits": self.limits.to_core(),
            "monitor_config": self.monitor.to_runtime(),
            "circuit_config": self.circuit.to_runtime(),
            "retry_budget": self.retry_budget.to_runtime(),
            "drain_timeout_s": self.limits.drain_timeout_s,
            "result_history": self.limits.history_size,
            "seed": self.seed,
        }

    def backend_timeouts(self) -> Timeouts:
        """Timeouts for the engine HTTP backend."""
        return self.timeouts.to_runtime(self.monitor.health_timeout_s)

    def execution_instances(self) -> list[ExecutionInstance]:
        """The real (non-simulated) instances as library objects."""
        return [i.to_instance(self.prices) for i in self.instances]


def _known(name: str, registry: dict[str, Any]) -> str:
    key = name.strip().lower().replace("-", "_")
    if key not in registry:
        raise ValueError(f"unknown name {name!r}; valid: {', '.join(registry)}")
    return key


def _canonical_prices(prices: dict[str, float]) -> dict[str, float]:
    from vllm_control_plane.sim.profiles import get_gpu

    out: dict[str, float] = {}
    for name, price in prices.items():
        if price < 0:
            raise ValueError(f"{name}: must be >= 0, got {price}")
        try:
            out[get_gpu(name).name] = float(price)
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
    return out


def _price(
    own: float | None, gpu_type: str | None, prices: dict[str, float] | None
) -> float | None:
    if own is not None or not prices or gpu_type is None:
        return own
    from vllm_control_plane.sim.profiles import get_gpu

    try:
        return prices.get(get_gpu(gpu_type).name)
    except ValueError:
        return prices.get(gpu_type)


# ---------------------------------------------------------------- loading


def parse_config(data: Any, source: str = "config") -> ControlPlaneConfig:
    """Validate already-parsed YAML/JSON data (raises :class:`ConfigError`)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    return validate(ControlPlaneConfig, data, source, ConfigError)


def load_config(path: str | Path) -> ControlPlaneConfig:
    """Read and validate a YAML config file (raises :class:`ConfigError`)."""
    return parse_config(read_yaml(path, ConfigError, "config file"), str(path))


def default_config() -> ControlPlaneConfig:
    """No file given: an embedded simulated fleet of two models on three kinds of hardware."""
    return parse_config(
        {
            "simulated": [
                {"name": "h100-llama70b-tp4", "model": "llama-3-70b", "gpu": "H100", "tp": 4},
                {
                    "name": "a100-llama70b-tp2pp2",
                    "model": "llama-3-70b",
                    "gpu": "A100-80G",
                    "tp": 2,
                    "pp": 2,
                },
                {"name": "l4-llama8b", "model": "llama-3-8b", "gpu": "L4", "seed": 1},
            ]
        },
        "default config",
    )

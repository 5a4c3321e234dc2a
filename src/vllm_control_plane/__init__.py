"""vLLM control plane: queue, schedule, route and observe requests across vLLM servers.

The public surface is what the quick-start guide uses, plus the result/stream types and the
backends. Everything else lives in submodules (``core``, ``sim``, ``gateway``, ``bench``).
"""

from __future__ import annotations

__version__ = "0.1.0"

from vllm_control_plane.backends.base import Backend, Timeouts
from vllm_control_plane.backends.openai_http import OpenAIHTTPBackend
from vllm_control_plane.backends.simulated import SimulatedBackend
from vllm_control_plane.core.limits import CoreLimits
from vllm_control_plane.manager import ControlPlaneManager, RequestError
from vllm_control_plane.runtime.circuit import CircuitConfig
from vllm_control_plane.runtime.handles import RequestResult
from vllm_control_plane.runtime.monitor import MonitorConfig
from vllm_control_plane.runtime.retry_budget import RetryBudgetConfig
from vllm_control_plane.types import (
    ExecutionInstance,
    ParallelismType,
    PerformanceMetrics,
    RequestMetadata,
    RequestPriority,
    RequestStatus,
    SchedulingDecision,
)

__all__ = [
    "Backend",
    "CircuitConfig",
    "ControlPlaneManager",
    "CoreLimits",
    "ExecutionInstance",
    "MonitorConfig",
    "OpenAIHTTPBackend",
    "ParallelismType",
    "PerformanceMetrics",
    "RequestError",
    "RequestMetadata",
    "RequestPriority",
    "RequestResult",
    "RequestStatus",
    "RetryBudgetConfig",
    "SchedulingDecision",
    "SimulatedBackend",
    "Timeouts",
    "__version__",
]

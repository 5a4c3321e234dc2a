"""Scheduling policies: a registry of factories, one policy per module.

``get_policy(name, ctx)`` builds one; an unknown name raises ``ValueError`` listing the valid
ones. Adding a policy = one module with a :class:`SchedulingPolicy` subclass + one line in
:data:`POLICIES` (the conformance test enrols it automatically).
"""

from __future__ import annotations

from vllm_control_plane.core.policies.adaptive import AdaptivePolicy, AdaptiveSettings
from vllm_control_plane.core.policies.base import (
    Candidates,
    Defer,
    Demote,
    Drop,
    FleetSignals,
    Placement,
    PolicyContext,
    PolicyFactory,
    SchedulingPolicy,
    Verdict,
)
from vllm_control_plane.core.policies.cost_optimized import CostOptimizedPolicy
from vllm_control_plane.core.policies.fifo import FifoPolicy
from vllm_control_plane.core.policies.priority import PriorityPolicy
from vllm_control_plane.core.policies.slo_aware import SloAwarePolicy

POLICIES: dict[str, PolicyFactory] = {
    "fifo": FifoPolicy,
    "priority": PriorityPolicy,
    "slo_aware": SloAwarePolicy,
    "cost_optimized": CostOptimizedPolicy,
    "adaptive": AdaptivePolicy,
}


def get_policy(name: str, ctx: PolicyContext) -> SchedulingPolicy:
    """Build the policy registered as ``name`` (case-insensitive; '-' and '_' alike)."""
    key = name.strip().lower().replace("-", "_")
    factory = POLICIES.get(key)
    if factory is None:
        raise ValueError(f"unknown scheduling policy {name!r}; valid: {', '.join(POLICIES)}")
    return factory(ctx)


__all__ = [
    "POLICIES",
    "AdaptivePolicy",
    "AdaptiveSettings",
    "Candidates",
    "CostOptimizedPolicy",
    "Defer",
    "Demote",
    "Drop",
    "FifoPolicy",
    "FleetSignals",
    "Placement",
    "PolicyContext",
    "PolicyFactory",
    "PriorityPolicy",
    "SchedulingPolicy",
    "SloAwarePolicy",
    "Verdict",
    "get_policy",
]

"""Routing strategies: pick one instance among the candidates a scheduling policy allows.

How it works: every strategy is a :class:`~vllm_control_plane.core.interfaces.RoutingStrategy`
in its own module; :data:`STRATEGIES` maps the name users type (``cp.router.routing_strategy =
"locality"``) to a factory taking an optional
:class:`~vllm_control_plane.core.interfaces.RoutingContext`. :func:`get_strategy` builds one;
an unknown name is an error listing the known ones, never a silent fallback. Names are matched
case-insensitively, with ``-`` accepted for ``_`` (``least-request``).

The project's own strategies come first; the baselines (DESIGN §6) are named after their origin.
docs/routing.md describes each one's score and when to use it.
"""

from __future__ import annotations

from collections.abc import Callable

from vllm_control_plane.core.interfaces import RoutingContext, RoutingStrategy
from vllm_control_plane.core.routing.affinity import Affinity
from vllm_control_plane.core.routing.least_connections import LeastConnections
from vllm_control_plane.core.routing.least_request import LeastRequest
from vllm_control_plane.core.routing.least_response_time import LeastResponseTime
from vllm_control_plane.core.routing.llmd_default import LlmdDefault
from vllm_control_plane.core.routing.load_balanced import LoadBalanced
from vllm_control_plane.core.routing.locality import Locality
from vllm_control_plane.core.routing.pow2_inflight import Pow2Inflight
from vllm_control_plane.core.routing.power_of_two import PowerOfTwo
from vllm_control_plane.core.routing.predictive import Predictive
from vllm_control_plane.core.routing.prodstack_prefixaware import ProdstackPrefixAware
from vllm_control_plane.core.routing.prodstack_session import ProdstackSession
from vllm_control_plane.core.routing.random_pick import RandomPick
from vllm_control_plane.core.routing.round_robin import RoundRobin
from vllm_control_plane.core.routing.sglang_cache_aware import SglangCacheAware
from vllm_control_plane.core.routing.weighted_round_robin import WeightedRoundRobin

StrategyFactory = Callable[[RoutingContext | None], RoutingStrategy]

_CLASSES: tuple[type[RoutingStrategy], ...] = (
    # the project's own
    LoadBalanced,
    RoundRobin,
    RandomPick,
    WeightedRoundRobin,
    LeastConnections,
    LeastResponseTime,
    PowerOfTwo,
    Affinity,
    Locality,
    Predictive,
    # baselines (DESIGN §6)
    LeastRequest,
    Pow2Inflight,
    ProdstackSession,
    ProdstackPrefixAware,
    SglangCacheAware,
    LlmdDefault,
)

STRATEGIES: dict[str, StrategyFactory] = {cls.name: cls for cls in _CLASSES}

BASELINES: tuple[str, ...] = (
    "round_robin",
    "random",
    "least_request",
    "pow2_inflight",
    "prodstack_session",
    "prodstack_prefixaware",
    "sglang_cache_aware",
    "llmd_default",
)


def strategy_names() -> list[str]:
    """Registered names, in registration order (the project's own first, then baselines)."""
    return list(STRATEGIES)


def normalize_name(name: str) -> str:
    """The registry key for a user-typed name; ValueError listing the valid ones if unknown."""
    key = str(name).strip().lower().replace("-", "_")
    if key not in STRATEGIES:
        valid = ", ".join(STRATEGIES)
        raise ValueError(f"unknown routing strategy {name!r}; valid: {valid}")
    return key


def get_strategy(name: str, context: RoutingContext | None = None) -> RoutingStrategy:
    """A fresh strategy registered under ``name`` (see :func:`normalize_name`)."""
    return STRATEGIES[normalize_name(name)](context)


__all__ = [
    "BASELINES",
    "STRATEGIES",
    "StrategyFactory",
    "get_strategy",
    "normalize_name",
    "strategy_names",
]

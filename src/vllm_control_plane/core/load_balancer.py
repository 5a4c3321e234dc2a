"""``cp.load_balancer``: pick an instance from a list with a named algorithm, outside the router.

The seed guide calls ``cp.load_balancer.select_instance(cp.get_instances(),
algorithm="weighted_round_robin")``. This filters the list to instances that can take a request
now (healthy, available, below their concurrency limit), runs the routing strategy registered
under ``algorithm`` and returns the chosen instance, or ``None`` when none is eligible. One
strategy object is kept per algorithm, so round-robin cursors and WRR weights carry over between
calls. Selection only: nothing is dispatched, so strategies that learn from ``on_dispatch`` /
``on_complete`` (in-flight tokens, prefix indexes) see no outcomes through this path — the
control plane's router is the path that runs them with feedback.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from vllm_control_plane.core.interfaces import RouteRequest, RoutingContext, RoutingStrategy
from vllm_control_plane.core.routing import get_strategy, normalize_name
from vllm_control_plane.types import DEFAULT_PROMPT_TOKENS, ExecutionInstance, RequestMetadata

DEFAULT_OUTPUT_TOKENS = 128  # expected output when a request sets no max_tokens


def eligible(instances: Iterable[ExecutionInstance]) -> list[ExecutionInstance]:
    """Instances that can take a request now."""
    return [i for i in instances if i.is_healthy and i.is_available and i.has_capacity]


def _prompt_text(meta: RequestMetadata) -> str:
    if meta.prompt is not None:
        return meta.prompt
    if meta.messages:
        return "\n".join(str(m.get("content", "")) for m in meta.messages)
    return ""


def route_request(meta: RequestMetadata | None, now: float) -> RouteRequest:
    """A RouteRequest for ``meta`` (or an anonymous one); ~4 characters per token if uncounted."""
    meta = meta or RequestMetadata(request_id="load-balancer")
    text = _prompt_text(meta)
    prompt_tokens = meta.prompt_tokens or (
        max(1, len(text) // 4) if text else DEFAULT_PROMPT_TOKENS
    )
    output = meta.max_tokens or DEFAULT_OUTPUT_TOKENS
    return RouteRequest(meta, prompt_tokens, output, now, prompt_text=text)


class LoadBalancer:
    """Stateful per-algorithm instance selection over a caller-supplied instance list."""

    def __init__(self, context: RoutingContext | None = None) -> None:
        self.context = context or RoutingContext()
        self._strategies: dict[str, RoutingStrategy] = {}

    def strategy(self, algorithm: str) -> RoutingStrategy:
        """The strategy object kept for ``algorithm`` (ValueError listing valid names)."""
        key = normalize_name(algorithm)
        if key not in self._strategies:
            self._strategies[key] = get_strategy(key, self.context)
        return self._strategies[key]

    def select_instance(
        self,
        instances: Iterable[ExecutionInstance] | Mapping[str, ExecutionInstance],
        algorithm: str = "round_robin",
        request: RequestMetadata | RouteRequest | None = None,
        now: float = 0.0,
    ) -> ExecutionInstance | None:
        """The instance ``algorithm`` picks among the eligible ones, or None if none is."""
        strategy = self.strategy(algorithm)  # validate the name even when nothing is eligible
        pool = list(instances.values()) if isinstance(instances, Mapping) else list(instances)
        candidates = eligible(pool)
        if not candidates:
            return None
        req = request if isinstance(request, RouteRequest) else route_request(request, now)
        choice = strategy.select(req, candidates)
        return next(c for c in candidates if c.instance_id == choice.instance_id)

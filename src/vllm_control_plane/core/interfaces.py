"""Contracts between the pieces of the pure core (no asyncio, no sockets, no wall clock).

* An :class:`Estimator` predicts how a request would fare on an instance (TTFT, TPOT, latency,
  cost). Policies use it for SLO feasibility and cost; routers for predicted load.
* A :class:`RoutingStrategy` picks one instance among the candidates a policy allows. It MUST be
  deterministic given its inputs and its injected ``rng``; it MUST NOT read the clock (``now`` is
  in :class:`RouteRequest`) or do I/O. It MAY keep state (round-robin cursor, prefix index) and
  learns outcomes through the ``on_*`` hooks.

Time everywhere in the core is in seconds (float, any origin) and is passed in.
"""

from __future__ import annotations

import abc
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

from vllm_control_plane.types import ExecutionInstance, RequestMetadata


@dataclass(frozen=True, slots=True)
class Prediction:
    """What the estimator expects for one request on one instance."""

    ttft_ms: float  # queueing on the engine + prefill
    tpot_ms: float  # per output token after the first
    latency_ms: float  # ttft + tpot * (output_tokens - 1)
    cost_usd: float  # the request's share of the instance's price while it runs


class Estimator(Protocol):
    """Predicts per-instance performance; calibrated online from observed timings."""

    def predict(
        self, instance: ExecutionInstance, prompt_tokens: int, output_tokens: int
    ) -> Prediction: ...


@dataclass(frozen=True, slots=True)
class RouteRequest:
    """Everything a routing strategy may look at about the request being placed."""

    request: RequestMetadata
    prompt_tokens: int  # counted (tokenizer) or given
    output_tokens: int  # max_tokens or the default expectation
    now: float
    prompt_text: str = ""  # flattened prompt (text-based prefix routers: SGLang, prod-stack)
    block_hashes: tuple[int, ...] = ()  # chained hashes of full 16-token prompt blocks


@dataclass(frozen=True, slots=True)
class RouteChoice:
    """The strategy's pick, with the scores behind it (higher = better) and a reason."""

    instance_id: str
    reason: str
    scores: dict[str, float] = field(default_factory=dict)


@dataclass
class RoutingContext:
    """Injected collaborators: the estimator and a seeded random generator."""

    estimator: Estimator | None = None
    rng: random.Random = field(default_factory=lambda: random.Random(0))


class RoutingStrategy(abc.ABC):
    """Picks one instance. ``candidates`` is non-empty, healthy, available, has capacity."""

    name: ClassVar[str]

    def __init__(self, context: RoutingContext | None = None) -> None:
        self.context = context or RoutingContext()

    @abc.abstractmethod
    def select(self, req: RouteRequest, candidates: Sequence[ExecutionInstance]) -> RouteChoice:
        """Return the chosen instance. MUST return one of ``candidates``."""

    def wait_for(
        self,
        req: RouteRequest,
        chosen: str,
        busy: Sequence[ExecutionInstance],
    ) -> str | None:
        """After :meth:`select` chose ``chosen``: an instance among ``busy`` (healthy but without
        room now) worth waiting for instead, or None to dispatch to ``chosen`` now.

        Why: with concurrency caps binding, "whoever frees a slot first" takes the request away
        from the instance holding its cached prefix; a strategy that can price the wait against
        the lost cache says so here. The default never waits.
        """
        return None

    def on_dispatch(self, req: RouteRequest, instance_id: str) -> None:  # noqa: B027
        """The request was sent to ``instance_id`` (update indexes, in-flight counts)."""

    def on_complete(self, request_id: str, instance_id: str, now: float) -> None:  # noqa: B027
        """A request dispatched by this strategy reached a terminal state."""

    def on_instance_removed(self, instance_id: str) -> None:  # noqa: B027
        """Forget everything about an instance that left the fleet."""

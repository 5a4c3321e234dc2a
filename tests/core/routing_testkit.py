"""Factories and a virtual-time fleet driver for the routing-strategy tests.

``FleetDriver`` plays the core's part: it offers the strategy the instances with room, calls
``select`` → ``on_dispatch``, keeps ``active_requests`` as the core would, and delivers
``on_complete`` when the test says a request finished. No clock, no I/O.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from vllm_control_plane.core.interfaces import RouteChoice, RouteRequest, RoutingStrategy
from vllm_control_plane.types import ExecutionInstance, RequestMetadata

_counter = iter(range(10**9))


def make_instance(instance_id: str, **kw: object) -> ExecutionInstance:
    kw.setdefault("gpu_type", "A100-80G")
    return ExecutionInstance(instance_id=instance_id, **kw)  # type: ignore[arg-type]


def make_fleet(n: int, prefix: str = "i", **kw: object) -> list[ExecutionInstance]:
    return [make_instance(f"{prefix}{k}", **kw) for k in range(n)]


def make_request(
    *,
    request_id: str | None = None,
    prompt_text: str = "",
    session_id: str | None = None,
    user_id: str | None = None,
    prompt_tokens: int = 100,
    output_tokens: int = 100,
    now: float = 0.0,
    block_hashes: tuple[int, ...] = (),
    model_name: str | None = None,
) -> RouteRequest:
    rid = request_id or f"r{next(_counter)}"
    meta = RequestMetadata(
        request_id=rid, session_id=session_id, user_id=user_id, model_name=model_name
    )
    return RouteRequest(
        meta, prompt_tokens, output_tokens, now, prompt_text=prompt_text, block_hashes=block_hashes
    )


def chained(blocks: Sequence[int]) -> tuple[int, ...]:
    """Chained block hashes from per-block contents (as the runtime computes them)."""
    out, prev = [], 0
    for b in blocks:
        prev = hash((prev, b))
        out.append(prev)
    return tuple(out)


class FleetDriver:
    def __init__(self, strategy: RoutingStrategy, instances: list[ExecutionInstance]) -> None:
        self.strategy = strategy
        self.instances = {i.instance_id: i for i in instances}
        self.placed: dict[str, str] = {}  # in-flight request id -> instance id
        self.choices: list[RouteChoice] = []

    def candidates(self) -> list[ExecutionInstance]:
        return [
            i for i in self.instances.values() if i.is_healthy and i.is_available and i.has_capacity
        ]

    def dispatch(self, req: RouteRequest, candidates: Sequence[ExecutionInstance] | None = None):
        cands = list(candidates) if candidates is not None else self.candidates()
        choice = self.strategy.select(req, cands)
        assert choice.instance_id in {c.instance_id for c in cands}
        self.choices.append(choice)
        self.strategy.on_dispatch(req, choice.instance_id)
        self.instances[choice.instance_id].active_requests += 1
        self.placed[req.request.request_id] = choice.instance_id
        return choice.instance_id

    def complete(self, request_id: str, now: float = 0.0) -> None:
        iid = self.placed.pop(request_id)
        inst = self.instances.get(iid)
        if inst is not None:
            inst.active_requests -= 1
            inst.total_requests += 1
        self.strategy.on_complete(request_id, iid, now)

    def complete_all(self, now: float = 0.0) -> None:
        for rid in list(self.placed):
            self.complete(rid, now)

    def remove(self, instance_id: str) -> None:
        del self.instances[instance_id]
        self.strategy.on_instance_removed(instance_id)

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(self.instances, 0)
        for c in self.choices:
            if c.instance_id in out:
                out[c.instance_id] += 1
        return out


def shared_prefix_prompts(rng: random.Random, n: int, groups: int, prefix_chars: int = 600):
    """n prompts drawn from ``groups`` long shared prefixes plus a short unique suffix."""
    prefixes = [f"system-{g}: " + "lorem ipsum " * (prefix_chars // 12) for g in range(groups)]
    return [rng.choice(prefixes) + f" question {k} " + "x" * rng.randrange(1, 80) for k in range(n)]

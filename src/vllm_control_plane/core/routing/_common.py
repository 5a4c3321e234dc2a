"""Helpers shared by the routing strategies: instance capacity, in-flight accounting, scoring.

* **Capacity** — how much serving work an instance absorbs per unit of time, relative to one
  A100-80G: ``gpus × speed class``. Decode dominates serving time and is memory-bandwidth bound,
  so a GPU's speed class is its HBM bandwidth over the A100-80G's, the GPU being resolved as the
  estimator does (``gpu_type``, else the known GPU nearest in memory). ``gpus`` is
  ``max(gpu_count, TP × PP × DP)``. Tensor parallelism does not scale perfectly (all-reduce), so
  this slightly flatters large TP groups; it is a ranking signal, not a performance model.
* **In-flight accounting** — :class:`InflightTokens` remembers, per request this strategy
  dispatched, its instance and its expected tokens (prompt + output) until ``on_complete``.
* **KV capacity** — the tokens an instance's KV cache holds, as vLLM sizes it at start-up for
  the model and GPU the estimator resolves (:func:`kv_capacity_tokens`); in-flight tokens over
  it are the KV usage the instance is heading for, before any scrape shows it.
* **Scores** — every strategy reports per-candidate scores in [0, 1], higher = better;
  :func:`minmax_scores` maps costs to that range (best 1, worst 0, all equal → 1).

Ties are always broken by the order of ``candidates`` unless a strategy says otherwise, so a
decision is a deterministic function of its inputs and the injected rng.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from vllm_control_plane.core.estimator import resolve_gpu, resolve_model
from vllm_control_plane.core.interfaces import RouteRequest
from vllm_control_plane.sim.kv_cache import num_gpu_blocks
from vllm_control_plane.sim.profiles import get_gpu
from vllm_control_plane.types import ExecutionInstance


@functools.lru_cache(maxsize=256)
def _speed_class(gpu_type: str | None, gpu_memory_gb: float) -> float:
    """HBM bandwidth relative to an A100-80G's. Cached: it runs per candidate per decision, and
    GPU profiles are registered at start-up, before any routing."""
    probe = ExecutionInstance("probe", gpu_type=gpu_type, gpu_memory_gb=gpu_memory_gb)
    return resolve_gpu(probe).mem_bw / get_gpu("A100-80G").mem_bw


def capacity(inst: ExecutionInstance) -> float:
    """Serving capacity relative to one A100-80G (see module docstring)."""
    parallel = inst.tensor_parallel_size * inst.pipeline_parallel_size * inst.data_parallel_size
    return max(inst.gpu_count, parallel) * _speed_class(inst.gpu_type, inst.gpu_memory_gb)


@dataclass(slots=True)
class Flight:
    """One request this strategy dispatched and has not seen complete."""

    instance_id: str
    tokens: int  # prompt + expected output
    started: float  # core time of dispatch


class InflightTokens:
    """Per-instance count and token total of the requests a strategy dispatched.

    Unknown request ids in :meth:`remove` are ignored: after a live strategy switch the new
    strategy hears completions of requests the old one placed.
    """

    def __init__(self) -> None:
        self._flights: dict[str, Flight] = {}
        self._tokens: dict[str, int] = {}
        self._count: dict[str, int] = {}

    def add(self, req: RouteRequest, instance_id: str) -> None:
        rid = req.request.request_id
        if rid in self._flights:  # a retry re-dispatches the same id: move it
            self.remove(rid)
        tokens = req.prompt_tokens + req.output_tokens
        self._flights[rid] = Flight(instance_id, tokens, req.now)
        self._tokens[instance_id] = self._tokens.get(instance_id, 0) + tokens
        self._count[instance_id] = self._count.get(instance_id, 0) + 1

    def remove(self, request_id: str) -> Flight | None:
        flight = self._flights.pop(request_id, None)
        if flight is not None and flight.instance_id in self._count:
            self._tokens[flight.instance_id] -= flight.tokens
            self._count[flight.instance_id] -= 1
        return flight

    def forget_instance(self, instance_id: str) -> None:
        self._tokens.pop(instance_id, None)
        self._count.pop(instance_id, None)
        gone = [rid for rid, f in self._flights.items() if f.instance_id == instance_id]
        for rid in gone:
            del self._flights[rid]

    def tables(self) -> tuple[Mapping[str, int], Mapping[str, int]]:
        """(tokens, count) per instance id, read-only, for hot loops over many candidates."""
        return self._tokens, self._count

    def tokens(self, instance_id: str) -> int:
        return self._tokens.get(instance_id, 0)

    def count(self, instance_id: str) -> int:
        return self._count.get(instance_id, 0)


def active(inst: ExecutionInstance, inflight: InflightTokens | None = None) -> int:
    """In-flight requests on ``inst``: the core's count, or ours if the core's lags behind."""
    ours = inflight.count(inst.instance_id) if inflight is not None else 0
    return max(inst.active_requests, ours)


def inflight_work(inst: ExecutionInstance, inflight: InflightTokens, req_tokens: int) -> float:
    """Tokens in flight on ``inst`` once this request is added: our in-flight tokens + requests
    we know only by count (scraped running + waiting, or the core's active count, beyond ours) ×
    our mean tokens per request + this request's tokens."""
    ours = inflight.tokens(inst.instance_id)
    n_ours = inflight.count(inst.instance_id)
    seen = max(inst.active_requests, inst.num_requests_running + inst.num_requests_waiting)
    unknown = max(0, seen - n_ours)
    per_request = ours / n_ours if n_ours else req_tokens
    return ours + unknown * per_request + req_tokens


def drain_time(inst: ExecutionInstance, inflight: InflightTokens, req_tokens: int) -> float:
    """Predicted work on ``inst`` after adding this request, in tokens per unit of capacity.

    work = :func:`inflight_work`; a KV cache at usage u stretches it by 1 / (1 − u/2)
    (admission stalls, preemption), so a full cache doubles it.
    """
    work = inflight_work(inst, inflight, req_tokens)
    kv = min(1.0, max(0.0, inst.kv_cache_usage))
    return work / (1.0 - 0.5 * kv) / capacity(inst)


@functools.lru_cache(maxsize=256)
def _kv_slots(
    model_name: str, gpu_type: str | None, gpu_memory_gb: float, tp: int, pp: int, dp: int
) -> int:
    probe = ExecutionInstance("probe", model_name=model_name, gpu_type=gpu_type,
                              gpu_memory_gb=gpu_memory_gb)  # fmt: skip
    gpu = resolve_gpu(probe)
    blocks = num_gpu_blocks(resolve_model(model_name), gpu, tp=tp, pp=pp,
                            block_size=gpu.default_block_size)  # fmt: skip
    return blocks * gpu.default_block_size * dp


def kv_capacity_tokens(inst: ExecutionInstance) -> int:
    """Tokens the instance's KV cache holds, as vLLM sizes it at start-up (0.9 of GPU memory
    minus the weights, per device; × DP replicas) for the model and GPU the estimator resolves;
    0 when the profile says the model does not fit (then only scraped KV usage is known)."""
    return _kv_slots(inst.model_name, inst.gpu_type, inst.gpu_memory_gb,
                     inst.tensor_parallel_size, inst.pipeline_parallel_size,
                     inst.data_parallel_size)  # fmt: skip


def over_bound(
    inst: ExecutionInstance, fleet_active: int, share: float, epsilon: float, slack: float = 0.0
) -> bool:
    """Bounded-load test (Mirrokni et al. 2018), with the bound split by capacity share.

    ``inst`` may take one more request if its in-flight count after adding it stays within
    ``ceil(max((1 + ε) × fair, fair + slack))``, ``fair = (fleet in-flight + 1) × share``. The
    absolute ``slack`` keeps a nearly idle fleet from counting 2 requests vs 1 as overload.
    """
    fair = (fleet_active + 1) * share
    return inst.active_requests + 1 > math.ceil(max((1.0 + epsilon) * fair, fair + slack))


def minmax_scores(costs: Mapping[str, float]) -> dict[str, float]:
    """Costs (lower = better) → scores in [0, 1]: best 1, worst 0, all equal → 1."""
    if not costs:
        return {}
    return scaled_scores(costs, min(costs.values()), max(costs.values()))


def scaled_scores(costs: Mapping[str, float], lo: float, hi: float) -> dict[str, float]:
    """:func:`minmax_scores` when the caller already knows the lowest and highest cost."""
    if hi - lo <= 1e-12 * max(1.0, abs(hi)):
        return dict.fromkeys(costs, 1.0)
    span = hi - lo
    return {k: (hi - v) / span for k, v in costs.items()}


def pick_min(
    candidates: Sequence[ExecutionInstance], cost: Callable[[ExecutionInstance], float]
) -> tuple[ExecutionInstance, dict[str, float]]:
    """The lowest-cost candidate (first in candidate order on ties) and every candidate's cost."""
    costs = {c.instance_id: cost(c) for c in candidates}
    best = min(candidates, key=lambda c: costs[c.instance_id])
    return best, costs


class LastBlocks:
    """Remembers the block hashes ``select`` computed, for the ``on_dispatch`` that follows."""

    def __init__(self, compute: Callable[[RouteRequest], tuple[int, ...]]) -> None:
        self._compute = compute
        self._req: RouteRequest | None = None
        self._blocks: tuple[int, ...] = ()

    def __call__(self, req: RouteRequest) -> tuple[int, ...]:
        if req is not self._req:
            self._req, self._blocks = req, self._compute(req)
        return self._blocks


def text_block_hashes(
    text: str, chunk_chars: int, seed: str = "", max_blocks: int | None = None
) -> tuple[int, ...]:
    """Chained hashes of the full ``chunk_chars``-character chunks of ``text``.

    Only equality matters, so Python's built-in hash is enough (stable within one process; a
    decision never depends on the hash values' order).
    """
    limit = len(text) // chunk_chars
    if max_blocks is not None:
        limit = min(limit, max_blocks)
    prev = hash(seed)
    out = []
    for i in range(limit):
        prev = hash((prev, text[i * chunk_chars : (i + 1) * chunk_chars]))
        out.append(prev)
    return tuple(out)

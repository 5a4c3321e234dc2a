"""What one routing decision costs: ``select`` (and the feedback hooks) on a warm 64-instance fleet.

For every registered strategy: a fleet of 64 instances (mixed H100 TP4 / A100 / L4), warmed with
``--warm`` dispatches of multi-turn-style prompts (a few hundred shared system prompts of 1-2K
tokens plus a unique tail, text of ~4 characters per token and chained 16-token block hashes),
about 200 requests kept in flight. Then ``--n`` more decisions are timed one by one: ``select``
alone, and the ``on_dispatch`` + ``on_complete`` that follow it. ``load_balanced`` runs a second
time with the roofline estimator. Prints p50, mean and p99 in µs as a markdown table. The
collector is paused while timing: its pauses over a large heap are not the decision's cost.

    python benchmarks/routing_decision_cost.py                 # defaults: 64 instances
    python benchmarks/routing_decision_cost.py --instances 8 --warm 2000 --n 2000
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import time

from vllm_control_plane.core.estimator import RooflineEstimator
from vllm_control_plane.core.interfaces import RouteRequest, RoutingContext
from vllm_control_plane.core.routing import get_strategy, strategy_names
from vllm_control_plane.types import ExecutionInstance, RequestMetadata

BLOCK = 16
CHARS_PER_TOKEN = 4


def make_fleet(n: int) -> list[ExecutionInstance]:
    kinds = [
        {"gpu_type": "H100", "gpu_count": 4, "tensor_parallel_size": 4},
        {"gpu_type": "A100-80G"},
        {"gpu_type": "L4", "gpu_memory_gb": 24},
    ]
    return [
        ExecutionInstance(f"inst-{k:02d}", max_concurrent_requests=10_000, **kinds[k % 3])
        for k in range(n)
    ]


class Workload:
    """Shared-prefix prompts: ``systems`` system prompts, each request adds a unique tail."""

    def __init__(self, rng: random.Random, systems: int = 300) -> None:
        self.rng = rng
        self.systems = [
            (s, rng.randrange(1024, 2048) // BLOCK) for s in range(systems)
        ]  # (id, blocks)
        self.k = 0

    def request(self, now: float) -> RouteRequest:
        self.k += 1
        sys_id, sys_blocks = self.systems[int(self.rng.paretovariate(1.2)) % len(self.systems)]
        tail_blocks = self.rng.randrange(2, 32)
        hashes, prev = [], 0
        for b in range(sys_blocks + tail_blocks):
            prev = hash((prev, sys_id, b) if b < sys_blocks else (prev, "tail", self.k, b))
            hashes.append(prev)
        head = f"[system {sys_id}] " + "policy text " * (sys_blocks * BLOCK * CHARS_PER_TOKEN // 12)
        text = head + f" user {self.k}: " + "words " * (tail_blocks * BLOCK * CHARS_PER_TOKEN // 6)
        meta = RequestMetadata(
            request_id=f"r{self.k}", session_id=f"s{self.rng.randrange(2000)}", prompt=text
        )
        tokens = len(hashes) * BLOCK
        return RouteRequest(meta, tokens, self.rng.randrange(16, 512), now, text, tuple(hashes))


def measure(
    name: str, instances: int, warm: int, n: int, seed: int, estimator: bool = False
) -> tuple[float, ...]:
    rng = random.Random(seed)
    fleet = make_fleet(instances)
    by_id = {i.instance_id: i for i in fleet}
    est = RooflineEstimator() if estimator else None
    strategy = get_strategy(name, RoutingContext(estimator=est, rng=random.Random(seed)))
    work = Workload(rng)
    inflight: list[tuple[str, str]] = []
    select_ns, hooks_ns = [], []
    for k in range(warm + n):
        now = k * 0.01
        for inst in rng.sample(fleet, 4):  # scraped gauges drift a little each tick
            inst.num_requests_waiting = rng.randrange(0, 3)
            inst.kv_cache_usage = rng.random() * 0.9
        req = work.request(now)
        t0 = time.perf_counter_ns()
        choice = strategy.select(req, fleet)
        t1 = time.perf_counter_ns()
        strategy.on_dispatch(req, choice.instance_id)
        hooks = time.perf_counter_ns() - t1
        by_id[choice.instance_id].active_requests += 1
        inflight.append((req.request.request_id, choice.instance_id))
        if len(inflight) > 200:  # complete a random in-flight request: ~200 stay in flight
            rid, iid = inflight.pop(rng.randrange(len(inflight)))
            by_id[iid].active_requests -= 1
            t2 = time.perf_counter_ns()
            strategy.on_complete(rid, iid, now)
            hooks += time.perf_counter_ns() - t2
        if k == warm - 1:
            gc.collect()
            gc.disable()  # time the decisions, not the collector's pauses over a big heap
        if k >= warm:
            select_ns.append(t1 - t0)
            hooks_ns.append(hooks)
    gc.enable()
    return (
        statistics.median(select_ns) / 1e3,
        statistics.fmean(select_ns) / 1e3,
        statistics.quantiles(select_ns, n=100)[98] / 1e3,
        statistics.fmean(hooks_ns) / 1e3,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--instances", type=int, default=64)
    ap.add_argument("--warm", type=int, default=5000, help="decisions before timing starts")
    ap.add_argument("--n", type=int, default=3000, help="timed decisions per strategy")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(f"{args.instances} instances, {args.warm} warm-up decisions, {args.n} timed")
    print("| strategy | select p50 µs | select mean µs | select p99 µs | hooks mean µs |")
    print("|---|---:|---:|---:|---:|")
    runs = [(name, False) for name in strategy_names()] + [("load_balanced", True)]
    for name, est in runs:
        p50, mean, p99, hooks = measure(name, args.instances, args.warm, args.n, args.seed, est)
        label = f"{name} (RooflineEstimator)" if est else name
        print(f"| {label} | {p50:.1f} | {mean:.1f} | {p99:.1f} | {hooks:.1f} |")


if __name__ == "__main__":
    main()

"""Decision cost of ControlCore.next_dispatches: 64 instances, 10,000 queued requests.

Measures the CPU time (thread time, so other processes on the machine do not count) of each
``next_dispatches(now, limit=1)`` call — one dispatch, including every request the policy
passed over, parked or demoted on the way — for each policy × strategy, and prints p50 / p99 /
max in microseconds. The fleet is half H100, half A100-80G (Llama-3-8B, 100 slots each);
requests mix priorities, prompt/output lengths, and SLOs (2 / 5 / 20 s) on half of them.

    python benchmarks/core_decision_cost.py [--policies fifo,slo_aware] [--strategies load_balanced]
"""

from __future__ import annotations

import argparse
import random
import time

import numpy as np

from vllm_control_plane.core.core import ControlCore
from vllm_control_plane.core.policies import POLICIES
from vllm_control_plane.types import ExecutionInstance, RequestMetadata, RequestPriority


def build(policy: str, strategy: str, instances: int, queued: int, seed: int) -> ControlCore:
    core = ControlCore(policy, strategy, seed=seed)
    rng = random.Random(seed)
    for k in range(instances):
        gpu = ("H100", "A100-80G")[k % 2]
        core.add_instance(
            ExecutionInstance(
                f"i{k}", gpu_type=gpu, model_name="llama-3-8b", max_concurrent_requests=100
            )
        )
    for k in range(queued):
        slo = rng.choice([2_000, 5_000, 20_000]) if k % 2 else None
        req = RequestMetadata(
            f"r{k}",
            priority=RequestPriority(rng.randrange(5)),
            max_tokens=rng.choice([64, 128, 256]),
            slo_deadline_ms=slo,
        )
        core.submit(req, 0.0, prompt_tokens=rng.choice([128, 512, 1024]))
    return core


def measure(core: ControlCore, dispatches: int) -> np.ndarray:
    out = []
    for _ in range(dispatches):
        t0 = time.thread_time_ns()
        got = core.next_dispatches(0.001, limit=1)
        out.append(time.thread_time_ns() - t0)
        if not got:
            break
    return np.array(out) / 1000.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policies", default=",".join(POLICIES))
    ap.add_argument("--strategies", default="round_robin,load_balanced")
    ap.add_argument("--instances", type=int, default=64)
    ap.add_argument("--queued", type=int, default=10_000)
    ap.add_argument("--dispatches", type=int, default=3_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(f"{'policy':15} {'strategy':14} {'n':>5} {'p50 us':>8} {'p99 us':>8} {'max us':>9}")
    for strategy in args.strategies.split(","):
        for policy in args.policies.split(","):
            core = build(policy, strategy, args.instances, args.queued, args.seed)
            us = measure(core, args.dispatches)
            p50, p99 = np.percentile(us, [50, 99])
            print(f"{policy:15} {strategy:14} {len(us):5d} {p50:8.1f} {p99:8.1f} {us.max():9.1f}")


if __name__ == "__main__":
    main()

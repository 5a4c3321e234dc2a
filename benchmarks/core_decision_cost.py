"""Decision cost of the pure core: the 64-instance dispatch call, and the gateway's hot path.

Default mode — ``next_dispatches`` under a deep queue: 64 instances, 10,000 queued requests.
Measures the CPU time (thread time, so other processes on the machine do not count) of each
``next_dispatches(now, limit=1)`` call — one dispatch, including every request the policy
passed over, parked or demoted on the way — for each policy × strategy, and prints p50 / p99 /
max in microseconds. The fleet is half H100, half A100-80G (Llama-3-8B, 100 slots each);
requests mix priorities, prompt/output lengths, and SLOs (2 / 5 / 20 s) on half of them.

``--small-fleet`` — what the core costs a gateway per request: 4 instances (2 H100, 2
A100-80G, 8 slots each) and a steady stream of requests, ``--inflight`` of them outstanding
(more than the 32 slots: a few stay queued). Each step submits one request, calls
``next_dispatches(now)`` once (starting whatever it returns), and finishes the oldest running
request with ``on_first_token`` + ``on_complete``: one request's full life per step, as the
gateway drives it. Prints mean / p50 / p99 CPU µs per request and the mean of each call.

    python benchmarks/core_decision_cost.py [--policies fifo,slo_aware] [--strategies load_balanced]
    python benchmarks/core_decision_cost.py --small-fleet [--inflight 40] [--gc-freeze]
        [--ballast 500000]   # a serving process's heap: what the cyclic GC must walk
"""

from __future__ import annotations

import argparse
import gc
import random
import time
from collections import deque

import numpy as np

from vllm_control_plane.core.core import ControlCore
from vllm_control_plane.core.policies import POLICIES
from vllm_control_plane.types import ExecutionInstance, RequestMetadata, RequestPriority

_PHASES = ("submit", "next_dispatches", "on_started", "on_first_token", "on_complete")


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


def deep_queue(args: argparse.Namespace) -> None:
    print(f"{'policy':15} {'strategy':14} {'n':>5} {'p50 us':>8} {'p99 us':>8} {'max us':>9}")
    for strategy in args.strategies.split(","):
        for policy in args.policies.split(","):
            core = build(policy, strategy, args.instances, args.queued, args.seed)
            us = measure(core, args.dispatches)
            p50, p99 = np.percentile(us, [50, 99])
            print(f"{policy:15} {strategy:14} {len(us):5d} {p50:8.1f} {p99:8.1f} {us.max():9.1f}")


# -- small fleet: the gateway's per-request path ------------------------------------------------
class SmallFleet:
    """Drives one core through submit → dispatch → start → first token → complete."""

    def __init__(self, policy: str, strategy: str, inflight: int, seed: int) -> None:
        self.core = ControlCore(policy, strategy, seed=seed)
        for k in range(4):
            gpu = ("H100", "A100-80G")[k % 2]
            inst = ExecutionInstance(f"i{k}", gpu_type=gpu, max_concurrent_requests=8)
            self.core.add_instance(inst)
        self.rng = random.Random(seed)
        self.inflight = inflight
        self.running: deque[str] = deque()
        self.seq = 0
        self.now = 0.0
        self.phase_ns = dict.fromkeys(_PHASES, 0)
        self.ballast: list[object] = []

    def step(self, timed: bool) -> None:
        """One request in, one request out (``timed``: add each call's CPU time per phase)."""
        core, clock, acc = self.core, time.thread_time_ns, self.phase_ns
        self.now += 0.001
        now, self.seq = self.now, self.seq + 1
        slo = 5_000 if self.seq % 4 == 0 else None
        req = RequestMetadata(f"r{self.seq}", max_tokens=16, slo_deadline_ms=slo)
        t0 = clock() if timed else 0
        core.submit(req, now, prompt_tokens=self.rng.choice([20, 60, 200]))
        t1 = clock() if timed else 0
        got = core.next_dispatches(now)
        t2 = clock() if timed else 0
        for d in got:
            core.on_started(d.request_id, now)
            self.running.append(d.request_id)
        t3 = clock() if timed else 0
        if self.seq >= self.inflight and self.running:
            rid = self.running.popleft()
            core.on_first_token(rid, now)
            t4 = clock() if timed else 0
            core.on_complete(
                rid, now, prompt_tokens=20, completion_tokens=16, finish_reason="length"
            )
            t5 = clock() if timed else 0
            if timed:
                acc["on_first_token"] += t4 - t3
                acc["on_complete"] += t5 - t4
        if timed:
            acc["submit"] += t1 - t0
            acc["next_dispatches"] += t2 - t1
            acc["on_started"] += t3 - t2


def small_fleet(args: argparse.Namespace) -> None:
    print(
        f"{'policy':15} {'strategy':14} {'mean us':>8} {'p50 us':>7} {'p99 us':>7}   "
        + " ".join(f"{p:>15}" for p in _PHASES)
    )
    for strategy in args.strategies.split(","):
        for policy in args.policies.split(","):
            print(small_fleet_row(policy, strategy, args))


def small_fleet_row(policy: str, strategy: str, args: argparse.Namespace) -> str:
    sim = SmallFleet(policy, strategy, args.inflight, args.seed)
    # Long-lived objects standing in for a serving process's heap (modules, clients, caches):
    # the cyclic collector's full passes walk all of them unless gc.freeze() set them aside.
    sim.ballast = [[k] for k in range(args.ballast)]  # lists: always tracked by the GC
    for _ in range(args.warmup):
        sim.step(timed=False)
    if args.gc_freeze:
        gc.collect()
        gc.freeze()
    # Mean from one clock pair around the whole run (no timer overhead); percentiles from a
    # clock pair per request; the phase means from a second, separately timed run.
    t0 = time.thread_time_ns()
    for _ in range(args.requests):
        sim.step(timed=False)
    mean = (time.thread_time_ns() - t0) / args.requests / 1e3
    per = np.empty(args.requests)
    for k in range(args.requests):
        s0 = time.thread_time_ns()
        sim.step(timed=False)
        per[k] = time.thread_time_ns() - s0
    p50, p99 = np.percentile(per / 1e3, [50, 99])
    sim.phase_ns = dict.fromkeys(_PHASES, 0)
    for _ in range(args.requests):
        sim.step(timed=True)
    phases = " ".join(f"{sim.phase_ns[p] / args.requests / 1e3:15.1f}" for p in _PHASES)
    if args.gc_freeze:
        gc.unfreeze()
    return f"{policy:15} {strategy:14} {mean:8.1f} {p50:7.1f} {p99:7.1f}   {phases}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policies", default=",".join(POLICIES))
    ap.add_argument("--strategies", default="round_robin,load_balanced")
    ap.add_argument("--instances", type=int, default=64)
    ap.add_argument("--queued", type=int, default=10_000)
    ap.add_argument("--dispatches", type=int, default=3_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--small-fleet", action="store_true", help="gateway hot path, 4 instances")
    ap.add_argument("--inflight", type=int, default=40, help="small fleet: outstanding requests")
    ap.add_argument("--requests", type=int, default=20_000, help="small fleet: timed requests")
    ap.add_argument("--warmup", type=int, default=2_000, help="small fleet: untimed requests")
    ap.add_argument("--gc-freeze", action="store_true", help="gc.freeze() after the warm-up")
    ap.add_argument("--ballast", type=int, default=0, help="small fleet: long-lived objects")
    args = ap.parse_args()
    if args.small_fleet:
        small_fleet(args)
    else:
        deep_queue(args)


if __name__ == "__main__":
    main()

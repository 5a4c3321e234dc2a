"""How fast `vcp bench` runs in virtual time: the whole control core over simulated engines.

`sim_virtual_speed.py` times the engines alone behind a plain router; this times what a
`vcp bench` probe costs: `bench.runner_virtual.run_virtual`, i.e. the project's `ControlCore`
(policy, strategy, estimator, accounting) deciding every request, scrapes every 0.5 s, and the
engines stepping in virtual time. Default: one hour of the Azure conversation trace at its real
rate on 8 × H100 (llama-3-8b), for round robin and for the project's best configuration.

    python benchmarks/bench_virtual_speed.py                  # 1 h, round_robin and vcp_best
    python benchmarks/bench_virtual_speed.py --configs vcp_best \
        --trace ../shared/traces/mooncake_conversation.jsonl
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from vllm_control_plane.bench.runner_virtual import run_virtual
from vllm_control_plane.bench.setup import FleetSpec, InstanceGroup, resolve_config
from vllm_control_plane.bench.workloads import TraceWorkload

DEFAULT_TRACE = Path(__file__).resolve().parents[2] / "shared/traces/azure_llm_2023_conv.csv"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", type=Path, default=DEFAULT_TRACE)
    ap.add_argument("--duration", type=float, default=3600.0, help="seconds of trace")
    ap.add_argument("--engines", type=int, default=8)
    ap.add_argument("--model", default="llama-3-8b")
    ap.add_argument("--gpu", default="H100")
    ap.add_argument("--max-model-len", type=int, default=8192)
    ap.add_argument("--configs", default="round_robin,vcp_best")
    args = ap.parse_args()

    workload = TraceWorkload(args.trace, max_model_len=args.max_model_len)
    requests = workload.requests(args.duration)
    group = InstanceGroup("fleet", args.engines, args.model, args.gpu, 1, args.max_model_len)
    fleet = FleetSpec((group,))
    print(f"{args.trace.name}: {len(requests)} requests over {args.duration:.0f} s of trace on "
          f"{args.engines} × {args.gpu} ({args.model}); load average "
          f"{os.getloadavg()[0]:.1f}")  # fmt: skip
    print("| config | requests | simulated s | wall s | × real time | µs wall per request |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in args.configs.split(","):
        config = resolve_config(name, None, None, None)
        t0 = time.process_time()
        result = run_virtual(fleet, config, requests, scenario="speed")
        cpu = time.process_time() - t0
        done = sum(1 for o in result.outcomes if o.status == "completed")
        print(f"| {name} | {len(requests)} ({done} completed) | {result.end_s:,.0f} | "
              f"{result.wall_s:.1f} (CPU {cpu:.1f}) | {result.end_s / result.wall_s:,.0f}× | "
              f"{1e6 * result.wall_s / len(requests):,.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()

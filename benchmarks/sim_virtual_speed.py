"""How fast the simulator runs in virtual time: a trace replayed on a fleet of engines.

Default: 8 × H100 serving llama-3-8b, the Azure conversation trace at its real rate, round-robin
routing. Prints simulated time, engine beats, wall time and the speed-up over real time, plus
a few latency figures so a change in the model shows up next to a change in speed.

    python benchmarks/sim_virtual_speed.py                     # full trace
    python benchmarks/sim_virtual_speed.py --limit 2000        # quick run
    python benchmarks/sim_virtual_speed.py --route least-loaded --no-fast-path --limit 500
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from vllm_control_plane.bench.traces import load_trace
from vllm_control_plane.sim.engine import SimEngine
from vllm_control_plane.sim.kv_cache import hash_trace_blocks
from vllm_control_plane.sim.types import EngineRequest, EngineSpec
from vllm_control_plane.sim.virtual import Arrival, least_loaded, round_robin, run_virtual

DEFAULT_TRACE = Path(__file__).resolve().parents[2] / "shared/traces/azure_llm_2023_conv.csv"


def build_arrivals(path: Path, limit: int | None, max_model_len: int) -> list[Arrival]:
    """Trace records -> arrivals; lengths clipped so prompt + output fits the context."""
    arrivals = []
    for i, rec in enumerate(load_trace(path, limit)):
        prompt = min(rec.prompt_tokens, max_model_len - 1)
        output = max(1, min(rec.output_tokens, max_model_len - prompt))
        hashes = hash_trace_blocks(rec.block_ids, num_tokens=prompt) if rec.block_ids else ()
        req = EngineRequest(f"r{i}", prompt, output, hashes, ignore_eos=True)
        arrivals.append(Arrival(rec.arrival_s, req))
    return arrivals


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", type=Path, default=DEFAULT_TRACE)
    ap.add_argument("--limit", type=int, default=None, help="first N requests only")
    ap.add_argument("--engines", type=int, default=8)
    ap.add_argument("--model", default="llama-3-8b")
    ap.add_argument("--gpu", default="H100")
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--route", choices=["round-robin", "least-loaded"], default="round-robin")
    ap.add_argument("--no-fast-path", action="store_true", help="step one beat at a time")
    args = ap.parse_args()

    engines = [
        SimEngine(EngineSpec(model=args.model, gpu=args.gpu, tp=args.tp, seed=i))
        for i in range(args.engines)
    ]
    arrivals = build_arrivals(args.trace, args.limit, engines[0].max_model_len)
    route = round_robin() if args.route == "round-robin" else least_loaded
    wall = time.perf_counter()
    records = run_virtual(engines, arrivals, route, fast_path=not args.no_fast_path)
    wall = time.perf_counter() - wall

    sim_end = max(r.finish_time or 0.0 for r in records)
    ttft = [r.ttft for r in records if r.ttft is not None]
    tokens = sum(r.output_tokens for r in records)
    rows = [
        ("requests", f"{len(records)}"),
        ("engines", f"{args.engines} x {args.gpu} {args.model} tp{args.tp}"),
        ("routing", args.route + ("" if not args.no_fast_path else " (no fast path)")),
        ("simulated time", f"{sim_end:.1f} s"),
        ("engine steps", f"{sum(e.num_steps for e in engines)}"),
        ("generated tokens", f"{tokens}"),
        ("wall time", f"{wall:.2f} s"),
        (
            "wall per engine step",
            f"{wall / max(1, sum(e.num_steps for e in engines)) * 1e6:.2f} us",
        ),
        ("speed-up vs real time", f"{sim_end / wall:.0f}x"),
        ("TTFT p50 / p99", f"{statistics.median(ttft) * 1e3:.1f} / {pct(ttft, 0.99) * 1e3:.1f} ms"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


if __name__ == "__main__":
    main()

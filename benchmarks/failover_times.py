#!/usr/bin/env python3
"""Time to eject a failed instance from rotation and to readmit it once it recovers.

Two simulated servers behind a ``ControlPlaneManager`` with the production defaults
(``MonitorConfig()``: health checks every 1 s, 2 failures to eject, 2 successes to readmit,
2 s check timeout; ``CircuitConfig()``: 5 consecutive request failures open the circuit, first
probe after 1 s). A light steady load (``--rate`` requests/s, short generations) runs
throughout. In each trial one server fails at a random moment and recovers ``--outage`` seconds
later; the script polls the manager every 5 ms and records when the instance leaves rotation and
when it is back. Faults:

* ``refused`` — the listener closes (a crashed or restarting engine: connection refused);
* ``unhealthy`` — ``/health`` answers 503 while requests are still served;
* ``errors`` — every inference request gets a 503 while ``/health`` says 200 (only passive
  detection, the circuit breaker, can see it; recovery goes through its half-open probe).

Real time, so it takes a while (≈ trials × (outage + 6 s) per fault):

    python benchmarks/failover_times.py                      # 5 trials per fault
    python benchmarks/failover_times.py --trials 10 --json benchmarks/results/failover.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vllm_control_plane.backends.base import Timeouts
from vllm_control_plane.backends.openai_http import OpenAIHTTPBackend
from vllm_control_plane.manager import ControlPlaneManager
from vllm_control_plane.runtime.circuit import CircuitConfig
from vllm_control_plane.runtime.monitor import MonitorConfig
from vllm_control_plane.sim.launcher import SimServer
from vllm_control_plane.sim.types import EngineSpec
from vllm_control_plane.types import ExecutionInstance, RequestMetadata

FAULTS = ("refused", "unhealthy", "errors")


@dataclass
class Trial:
    fault: str
    eject_s: float | None = None  # fault → out of rotation
    readmit_s: float | None = None  # recovery → back in rotation
    ejected_by: str = ""  # health, circuit (whichever saw it first)
    failed_requests: int = 0


@dataclass
class Load:
    """A steady trickle of short requests; counts how each ended."""

    cp: ControlPlaneManager
    rate: float
    ended: dict[str, int] = field(default_factory=dict)
    _n: int = 0

    async def run(self, stop: asyncio.Event) -> None:
        pending: set[asyncio.Task[None]] = set()
        while not stop.is_set() and self.rate > 0:
            self._n += 1
            task = asyncio.create_task(self._one(f"load-{self._n}"))
            pending.add(task)
            task.add_done_callback(pending.discard)
            await asyncio.sleep(random.expovariate(self.rate))
        if self.rate <= 0:
            await stop.wait()
        await asyncio.gather(*pending)

    async def _one(self, rid: str) -> None:
        await self.cp.submit_request(RequestMetadata(request_id=rid, max_tokens=8, ignore_eos=True))
        result = await self.cp.get_result(rid)
        self.ended[result.status.value] = self.ended.get(result.status.value, 0) + 1


async def _wait_for(cond: Any, timeout: float) -> float | None:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if cond():
            return time.monotonic() - start
        await asyncio.sleep(0.005)
    return None


def _inject(srv: SimServer, fault: str, outage: float) -> None:
    if fault == "refused":
        srv.set_faults(startup_delay_s=outage)  # port closed for `outage`, then back
    elif fault == "unhealthy":
        srv.set_faults(unhealthy=True)
    else:
        srv.set_faults(error_rate=1.0, error_status=503)


def _recover(srv: SimServer, fault: str) -> None:
    if fault == "unhealthy":
        srv.set_faults(unhealthy=False)
    elif fault == "errors":
        srv.set_faults(error_rate=0.0)


async def trial(fault: str, outage: float, rate: float, scale: float) -> Trial:
    spec = EngineSpec(model="llama-3-8b", gpu="H100", mean_output_tokens=8.0)
    async with SimServer(spec, time_scale=scale) as a, SimServer(spec, time_scale=scale) as b:
        cp = ControlPlaneManager(
            "fifo",
            "round_robin",
            backend=OpenAIHTTPBackend(Timeouts(first_token=10, idle=10)),
            monitor_config=MonitorConfig(),
            circuit_config=CircuitConfig(),
        )
        for iid, srv in (("a", a), ("b", b)):
            inst = ExecutionInstance(
                instance_id=iid, host="127.0.0.1", port=srv.port, model_name="llama-3-8b"
            )
            cp.register_instance(inst)
        await cp.start()
        stop = asyncio.Event()
        load = Load(cp, rate)
        loader = asyncio.create_task(load.run(stop))
        await asyncio.sleep(1.5 + random.random())  # a random phase against the check timer
        out = Trial(fault)
        _inject(a, fault, outage)
        out.eject_s = await _wait_for(lambda: not cp.rotation.in_rotation("a"), outage)
        out.ejected_by = ",".join(cp.rotation.reasons("a"))
        await asyncio.sleep(max(outage - (out.eject_s or outage), 0.0))
        _recover(a, fault)
        await _wait_for(lambda: a.ready, 30.0)  # "refused": the port is bound again
        out.readmit_s = await _wait_for(lambda: cp.rotation.in_rotation("a"), 30.0)
        stop.set()
        await loader
        await cp.stop()
        out.failed_requests = load.ended.get("failed", 0)
        return out


def summary(trials: list[Trial]) -> dict[str, Any]:
    def stats(values: list[float | None]) -> dict[str, float | None]:
        got = [v for v in values if v is not None]
        if not got:
            return {"mean": None, "min": None, "max": None, "missed": len(values)}
        return {"mean": statistics.fmean(got), "min": min(got), "max": max(got),
                "missed": len(values) - len(got)}  # fmt: skip

    return {
        "eject_s": stats([t.eject_s for t in trials]),
        "readmit_s": stats([t.readmit_s for t in trials]),
        "ejected_by": sorted({t.ejected_by for t in trials}),
        "failed_requests": sum(t.failed_requests for t in trials),
        "trials": len(trials),
    }


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--outage", type=float, default=4.0, help="seconds the fault lasts")
    ap.add_argument("--rate", type=float, default=20.0, help="background requests per second")
    ap.add_argument("--time-scale", type=float, default=0.1)
    ap.add_argument("--faults", default=",".join(FAULTS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    random.seed(args.seed)
    report: dict[str, Any] = {"outage_s": args.outage, "rate": args.rate}
    for fault in args.faults.split(","):
        trials = [await trial(fault, args.outage, args.rate, args.time_scale)
                  for _ in range(args.trials)]  # fmt: skip
        report[fault] = summary(trials)
        print(fault, json.dumps(report[fault]), flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    asyncio.run(main())

"""A scenario's full comparison: goodput of each configuration, then all of them side by side.

How it works: for every configuration (the project's best and each baseline) a goodput search
(:mod:`.goodput`) runs the scenario's request stream at several rate multipliers. Then every
configuration is run once more at one common *reference* multiplier — the highest multiplier at
which the best baseline still met the target, i.e. the load where the comparison is hardest for
the project — and latency percentiles, attainment, rejections, prefix hits, imbalance and cost
are tabulated side by side. Ratios are goodput over round robin's and over the best baseline's,
all measured in the same invocation on the same machine (DESIGN §7).
"""

from __future__ import annotations

import multiprocessing
import queue
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from vllm_control_plane.bench.goodput import TARGET, Goodput, Probe, search
from vllm_control_plane.bench.report import fmt, markdown_table, run_table, summarize
from vllm_control_plane.bench.results import RunResult
from vllm_control_plane.bench.runner_virtual import run_virtual
from vllm_control_plane.bench.scenarios import Scenario, get_scenario
from vllm_control_plane.bench.setup import BenchConfig
from vllm_control_plane.bench.workloads import BenchRequest, Workload

OnProbe = Callable[[str, Probe], None]


@dataclass
class Entry:
    config: BenchConfig
    goodput: Goodput
    reference: RunResult | None = None

    @property
    def rate(self) -> float:
        return self.goodput.rate or 0.0


@dataclass
class Comparison:
    scenario: Scenario
    seed: int
    duration_s: float
    entries: list[Entry] = field(default_factory=list)
    reference_multiplier: float | None = None
    wall_s: float = 0.0
    workload: dict[str, object] = field(default_factory=dict)

    def project(self) -> list[Entry]:
        return [e for e in self.entries if not e.config.baseline]

    def baselines(self) -> list[Entry]:
        return [e for e in self.entries if e.config.baseline]

    def best_baseline(self) -> Entry | None:
        base = self.baselines()
        return max(base, key=lambda e: e.rate) if base else None

    def entry(self, name: str) -> Entry | None:
        return next((e for e in self.entries if e.config.name == name), None)

    def ratios(self, e: Entry) -> tuple[float | None, float | None]:
        """(goodput / round robin's, goodput / the best baseline's)."""
        rr, best = self.entry("round_robin"), self.best_baseline()

        def ratio(other: Entry | None) -> float | None:
            if other is None or other is e or not other.rate:
                return None
            return e.rate / other.rate

        return ratio(rr), ratio(best)

    # -------------------------------------------------------------------------- output ----
    def goodput_table(self) -> str:
        headers = [
            "config",
            "policy / strategy",
            "goodput req/s",
            "× round robin",
            "× best baseline",
            "rejected at goodput",
            "probes",
        ]
        rows = []
        for e in sorted(self.entries, key=lambda x: -x.rate):
            vs_rr, vs_best = self.ratios(e)
            rows.append(
                [
                    e.config.name + ("" if e.config.baseline else " (project)"),
                    f"{e.config.policy} / {e.config.strategy}",
                    fmt(e.goodput.rate, 2) + ("" if e.goodput.bracketed else " (≥)"),
                    fmt(vs_rr, 2),
                    fmt(vs_best, 2),
                    fmt(e.goodput.rejection_rate, pct=True),
                    str(len(e.goodput.probes)),
                ]
            )
        return markdown_table(headers, rows)

    def reference_table(self) -> str:
        runs = [e.reference for e in self.entries if e.reference is not None]
        return run_table([summarize(r) for r in runs])

    def markdown(self) -> str:
        s = self.scenario
        ref = self.reference_multiplier
        lines = [
            f"### {s.title} (`{s.name}`)",
            "",
            s.summary,
            "",
            f"Fleet: {s.fleet.label()}. Window {self.duration_s:g} s of arrivals per run, "
            f"seed {self.seed}, wall time {self.wall_s:.0f} s.",
            "",
            self.goodput_table(),
            "",
        ]
        if ref is not None:
            rate = next((e.reference.offered_rate for e in self.entries if e.reference), None)
            lines += [
                f"All configurations at the best baseline's goodput load (×{ref:.3g}, "
                f"{fmt(rate, 2)} req/s offered):",
                "",
                self.reference_table(),
                "",
            ]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "scenario": self.scenario.name,
            "title": self.scenario.title,
            "fleet": self.scenario.fleet.label(),
            "workload": self.workload,
            "seed": self.seed,
            "duration_s": self.duration_s,
            "reference_multiplier": self.reference_multiplier,
            "wall_s": self.wall_s,
            "configs": [],
        }
        for e in self.entries:
            vs_rr, vs_best = self.ratios(e)
            out["configs"].append(
                {  # type: ignore[attr-defined]
                    **e.config.describe(),
                    "goodput": e.goodput.to_dict(),
                    "vs_round_robin": vs_rr,
                    "vs_best_baseline": vs_best,
                    "reference": summarize(e.reference) if e.reference else None,
                }
            )
        return out


def miss_budget(requests: Sequence[BenchRequest], target: float = TARGET) -> int:
    """How many SLO misses a run may have and still reach ``target`` attainment."""
    return int((1 - target) * sum(1 for r in requests if r.cls.has_slo))


def probe_runner(
    scenario: Scenario, workload: Workload, cfg: BenchConfig, seed: int, duration: float
) -> Callable[[float, bool], RunResult]:
    """``run_at(multiplier, fail_fast)`` for one configuration on the scenario's stream."""

    def run_at(m: float, fail_fast: bool = False) -> RunResult:
        reqs = workload.requests(duration, m)
        limit = miss_budget(reqs) if fail_fast else None
        return run_virtual(
            scenario.fleet,
            cfg,
            reqs,
            scenario=scenario.name,
            seed=seed,
            multiplier=m,
            duration_s=duration,
            max_misses=limit,
        )

    return run_at


@dataclass(frozen=True)
class _Job:
    """What a worker process needs (scenarios are re-resolved by name: no pickled closures)."""

    scenario: str
    config: BenchConfig
    seed: int
    duration: float
    max_runs: int
    traces_dir: Path | None
    multiplier: float | None = None  # set: one reference run instead of a search


_WORKLOADS: dict[tuple[str, int, Path | None], Workload] = {}


def _workload(job: _Job) -> tuple[Scenario, Workload]:
    scenario = get_scenario(job.scenario)
    key = (job.scenario, job.seed, job.traces_dir)
    if key not in _WORKLOADS:  # one per process: trace parsing and generation happen once
        _WORKLOADS[key] = scenario.workload(job.seed, job.traces_dir)
    return scenario, _WORKLOADS[key]


# In a worker process: where its probes go, so the parent's progress bars move per probe.
_PROBES: Any = None


def _init_worker(probes: Any) -> None:
    global _PROBES
    _PROBES = probes


def _search_job(job: _Job, on_probe: Callable[[Probe], None] | None = None) -> Goodput:
    scenario, workload = _workload(job)
    run_at = probe_runner(scenario, workload, job.config, job.seed, job.duration)
    if on_probe is None and _PROBES is not None:
        sink, name = _PROBES, job.config.name

        def on_probe(p: Probe) -> None:
            sink.put((name, p))

    g = search(run_at, start=scenario.start_multiplier, max_runs=job.max_runs, on_probe=on_probe)
    g.best_run = None  # keep results small: the reference runs are what gets tabulated
    return g


def _reference_job(job: _Job) -> RunResult:
    scenario, workload = _workload(job)
    assert job.multiplier is not None
    return probe_runner(scenario, workload, job.config, job.seed, job.duration)(job.multiplier)


def _map(
    fn: Callable[[_Job], object],
    jobs: list[_Job],
    workers: int,
    done: Callable[[_Job], None] | None,
    on_probe: OnProbe | None = None,
) -> list[object]:
    """Run ``fn`` over ``jobs`` in order, in ``workers`` processes when > 1.

    In processes, the workers' probes come back through a queue and are handed to
    ``on_probe`` (in this process, between waits), each job's before its ``done``."""
    if workers <= 1:
        out = []
        for job in jobs:
            out.append(fn(job))
            if done is not None:
                done(job)
        return out
    probes = multiprocessing.get_context().Queue() if on_probe is not None else None

    def drain() -> None:
        while probes is not None:
            try:
                name, p = probes.get_nowait()
            except queue.Empty:
                return
            on_probe(name, p)  # type: ignore[misc]

    with ProcessPoolExecutor(
        max_workers=workers, initializer=_init_worker, initargs=(probes,)
    ) as pool:
        futures = {pool.submit(fn, job): k for k, job in enumerate(jobs)}
        results: list[object] = [None] * len(jobs)
        pending = set(futures)
        while pending:
            finished, pending = wait(pending, timeout=0.25, return_when=FIRST_COMPLETED)
            drain()
            for fut in finished:
                k = futures[fut]
                results[k] = fut.result()
                if done is not None:
                    done(jobs[k])
        drain()
    if probes is not None:
        probes.close()
    return results


def compare(
    scenario: Scenario,
    configs: Sequence[BenchConfig],
    *,
    seed: int = 0,
    duration_s: float | None = None,
    max_runs: int = 9,
    traces_dir: Path | None = None,
    jobs: int = 1,
    on_probe: OnProbe | None = None,
    on_done: Callable[[str, str], None] | None = None,
) -> Comparison:
    """Goodput search for every config, then a side-by-side run at the reference load.

    ``jobs`` > 1 runs configurations in that many processes (each run stays deterministic,
    the numbers are those of ``jobs=1``); ``on_probe(config, probe)`` hears every probe of
    every search (from worker processes too), ``on_done(phase, config)`` every finished job.
    """
    wall = time.perf_counter()
    duration = duration_s or scenario.duration_s
    result = Comparison(scenario, seed, duration)
    base = [_Job(scenario.name, c, seed, duration, max_runs, traces_dir) for c in configs]
    _, workload = _workload(base[0]) if base else (None, scenario.workload(seed, traces_dir))
    result.workload = workload.describe()

    def searched(job: _Job) -> Goodput:
        report = (lambda p: on_probe(job.config.name, p)) if on_probe else None
        return _search_job(job, report)

    def tell(phase: str) -> Callable[[_Job], None] | None:
        return (lambda job: on_done(phase, job.config.name)) if on_done else None

    search_fn = searched if jobs <= 1 else _search_job
    goodputs = _map(search_fn, base, jobs, tell("search"), on_probe)
    result.entries = [Entry(c, g) for c, g in zip(configs, goodputs, strict=True)]  # type: ignore[misc]
    best = result.best_baseline() or (result.entries[0] if result.entries else None)
    if best is not None and best.goodput.multiplier is not None:
        m = best.goodput.multiplier
        result.reference_multiplier = m
        refs = _map(
            _reference_job, [replace(j, multiplier=m) for j in base], jobs, tell("reference")
        )
        for e, r in zip(result.entries, refs, strict=True):
            e.reference = r  # type: ignore[assignment]
    result.wall_s = time.perf_counter() - wall
    return result

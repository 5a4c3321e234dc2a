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

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vllm_control_plane.bench.goodput import Goodput, Probe, search
from vllm_control_plane.bench.report import fmt, markdown_table, run_table, summarize
from vllm_control_plane.bench.results import RunResult
from vllm_control_plane.bench.runner_virtual import run_virtual
from vllm_control_plane.bench.scenarios import Scenario
from vllm_control_plane.bench.setup import BenchConfig

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
        headers = ["config", "policy / strategy", "goodput req/s", "× round robin",
                   "× best baseline", "rejected at goodput", "probes"]  # fmt: skip
        rows = []
        for e in sorted(self.entries, key=lambda x: -x.rate):
            vs_rr, vs_best = self.ratios(e)
            rows.append([
                e.config.name + ("" if e.config.baseline else " (project)"),
                f"{e.config.policy} / {e.config.strategy}",
                fmt(e.goodput.rate, 2) + ("" if e.goodput.bracketed else " (≥)"),
                fmt(vs_rr, 2), fmt(vs_best, 2),
                fmt(e.goodput.rejection_rate, pct=True),
                str(len(e.goodput.probes)),
            ])  # fmt: skip
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
            out["configs"].append({  # type: ignore[attr-defined]
                **e.config.describe(),
                "goodput": e.goodput.to_dict(),
                "vs_round_robin": vs_rr,
                "vs_best_baseline": vs_best,
                "reference": summarize(e.reference) if e.reference else None,
            })  # fmt: skip
        return out


def compare(
    scenario: Scenario,
    configs: Sequence[BenchConfig],
    *,
    seed: int = 0,
    duration_s: float | None = None,
    max_runs: int = 9,
    traces_dir: Path | None = None,
    on_probe: OnProbe | None = None,
    on_reference: Callable[[str], None] | None = None,
) -> Comparison:
    """Goodput search for every config, then a side-by-side run at the reference load."""
    wall = time.perf_counter()
    duration = duration_s or scenario.duration_s
    workload = scenario.workload(seed, traces_dir)
    result = Comparison(scenario, seed, duration, workload=workload.describe())

    def runner(cfg: BenchConfig) -> Callable[[float], RunResult]:
        def run_at(m: float) -> RunResult:
            reqs = workload.requests(duration, m)
            return run_virtual(scenario.fleet, cfg, reqs, scenario=scenario.name, seed=seed,
                               multiplier=m, duration_s=duration)  # fmt: skip

        return run_at

    for cfg in configs:
        report = (lambda p, n=cfg.name: on_probe(n, p)) if on_probe else None
        g = search(runner(cfg), start=scenario.start_multiplier, max_runs=max_runs,
                   on_probe=report)  # fmt: skip
        g.best_run = None  # keep memory flat: the reference runs are what we tabulate
        result.entries.append(Entry(cfg, g))
    best = result.best_baseline() or (result.entries[0] if result.entries else None)
    if best is not None and best.goodput.multiplier is not None:
        result.reference_multiplier = best.goodput.multiplier
        for e in result.entries:
            if on_reference is not None:
                on_reference(e.config.name)
            e.reference = runner(e.config)(best.goodput.multiplier)
    result.wall_s = time.perf_counter() - wall
    return result

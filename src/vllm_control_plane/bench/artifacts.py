"""Write a run's or a comparison's results to a directory: markdown, JSON and PNG plots."""

from __future__ import annotations

import json
from pathlib import Path

from vllm_control_plane.bench.compare import Comparison
from vllm_control_plane.bench.goodput import Goodput
from vllm_control_plane.bench.report import run_table, summarize
from vllm_control_plane.bench.results import RunResult


def _dump(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


def write_run(result: RunResult, out: Path, *, plots: bool = True) -> list[Path]:
    """``run.md`` (one-row table), ``run.json`` (summary + every outcome), plots."""
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(result)
    paths = [
        _dump(out / "run.json", {"summary": summary, **result.to_dict()}),
    ]
    md = out / "run.md"
    md.write_text(run_table([summary]) + "\n")
    paths.append(md)
    if plots:
        from vllm_control_plane.bench import plots as p

        paths.append(p.latency_cdfs({result.config: result}, out / "latency_cdf.png"))
        if result.load is not None:
            paths.append(p.instance_load({result.config: result}, out / "instance_load.png"))
    return paths


def write_goodput(
    g: Goodput, config: str, out: Path, *, plots: bool = True, title: str = ""
) -> list[Path]:
    """``goodput.json`` (the answer and every probe) and ``attainment.png`` (attainment vs
    offered rate) of one configuration's search."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [_dump(out / "goodput.json", {"config": config, **g.to_dict()})]
    if plots:
        from vllm_control_plane.bench import plots as p

        paths.append(p.attainment_vs_rate({config: g}, out / "attainment.png", [config], title))
    return paths


def write_comparison(comp: Comparison, out: Path, *, plots: bool = True) -> list[Path]:
    """``<scenario>.md``, ``<scenario>.json`` and three plots in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    name = comp.scenario.name
    md = out / f"{name}.md"
    md.write_text(comp.markdown() + "\n")
    paths = [md, _dump(out / f"{name}.json", comp.to_dict())]
    if not plots:
        return paths
    from vllm_control_plane.bench import plots as p

    project = [e.config.name for e in comp.project()]
    best = comp.best_baseline()
    highlight = [*project, *([best.config.name] if best else [])]
    refs = {e.config.name: e.reference for e in comp.entries if e.reference is not None}
    title = comp.scenario.title
    paths.append(
        p.attainment_vs_rate(
            {e.config.name: e.goodput for e in comp.entries},
            out / f"{name}_attainment.png",
            highlight,
            title,
        )
    )
    if refs:
        paths.append(p.latency_cdfs(refs, out / f"{name}_latency_cdf.png", highlight, title))
        shown = {k: refs[k] for k in highlight if k in refs}
        paths.append(p.instance_load(shown, out / f"{name}_instance_load.png", title))
    return paths

"""The project's targets, checked against comparison results (``<scenario>.json`` of ``compare``).

The targets (issue "vcp bench"): the project's configuration reaches ≥ 1.3× the best baseline's
goodput on the heterogeneous, multi-turn and trace-replay scenarios, ≥ 2× round robin's on every
scenario, and is never more than 5 % below the best baseline. ``summary_table`` reads the JSON
files a ``vcp bench compare`` wrote and says, per scenario, which targets hold and by how much
the others are missed — computed from the measured goodputs, never asserted.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from vllm_control_plane.bench.report import markdown_table
from vllm_control_plane.bench.setup import PROJECT_BEST

VS_BEST = {"heterogeneous": 1.3, "multiturn": 1.3, "azure": 1.3, "mooncake": 1.3}
VS_ROUND_ROBIN = 2.0
NEVER_BELOW = 0.95


def load(out: Path, scenarios: Iterable[str]) -> list[dict[str, Any]]:
    """The comparison results of ``scenarios`` found in ``out`` (missing ones skipped)."""
    found = []
    for name in scenarios:
        path = out / f"{name}.json"
        if path.exists():
            found.append(json.loads(path.read_text()))
    return found


def _rate(cfg: Mapping[str, Any]) -> float:
    return float(cfg["goodput"]["rate"] or 0.0)


def _check(value: float | None, goal: float) -> str:
    if value is None:
        return "–"
    return f"{value:.2f}× ✓" if value >= goal else f"{value:.2f}× ✗ ({value / goal - 1:+.0%})"


def row(result: Mapping[str, Any], project: str = PROJECT_BEST) -> list[str]:
    """One scenario: goodputs and each target's verdict."""
    configs = result["configs"]
    ours = next(c for c in configs if c["name"] == project)
    base = [c for c in configs if c["baseline"]]
    best = max(base, key=_rate)
    rr = next((c for c in base if c["name"] == "round_robin"), None)
    vs_best = _rate(ours) / _rate(best) if _rate(best) else None
    vs_rr = _rate(ours) / _rate(rr) if rr and _rate(rr) else None
    goal = VS_BEST.get(result["scenario"], NEVER_BELOW)
    rejected = ours["goodput"]["rejection_rate"]
    return [
        result["scenario"],
        f"{_rate(ours):.2f}",
        f"{best['name']} {_rate(best):.2f}",
        _check(vs_best, goal),
        _check(vs_rr, VS_ROUND_ROBIN),
        "–" if rejected is None else f"{rejected:.1%}",
    ]


def summary_table(results: Iterable[Mapping[str, Any]], project: str = PROJECT_BEST) -> str:
    """Markdown: per scenario, the project's goodput against the targets."""
    headers = [
        "scenario",
        f"{project} goodput req/s",
        "best baseline req/s",
        "× best baseline (goal)",
        "× round robin (goal 2×)",
        f"{project} rejected",
    ]
    note = (
        f"Goals: × best baseline ≥ {min(VS_BEST.values()):g} on "
        f"{', '.join(VS_BEST)}, ≥ {NEVER_BELOW:g} elsewhere; ✗ shows the shortfall."
    )
    return markdown_table(headers, [row(r, project) for r in results]) + "\n\n" + note

"""A short scenario end to end (compare + artifacts), and the ``vcp bench`` commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vllm_control_plane.bench.artifacts import write_comparison
from vllm_control_plane.bench.compare import compare
from vllm_control_plane.bench.scenarios import SCENARIOS, get_scenario
from vllm_control_plane.bench.setup import baseline, project_best, resolve_config
from vllm_control_plane.cli import app


def test_short_comparison_writes_table_json_and_plots(tmp_path: Path) -> None:
    sc = get_scenario("priorities")
    configs = [project_best(), baseline("round_robin"), baseline("least_request")]
    comp = compare(sc, configs, duration_s=8, max_runs=3, jobs=1)
    assert len(comp.entries) == 3 and comp.reference_multiplier is not None
    assert all(e.reference is not None for e in comp.entries)
    md = comp.markdown()
    assert "goodput req/s" in md and "× round robin" in md and "rejected" in md
    paths = write_comparison(comp, tmp_path)
    names = {p.name for p in paths}
    assert {"priorities.md", "priorities.json", "priorities_attainment.png"} <= names
    data = json.loads((tmp_path / "priorities.json").read_text())
    assert {c["name"] for c in data["configs"]} == {c.name for c in configs}
    assert all(c["goodput"]["probes"] for c in data["configs"])


def test_every_scenario_builds_and_runs_briefly() -> None:
    for sc in SCENARIOS.values():
        wl = sc.workload(0)
        reqs = wl.requests(3, sc.start_multiplier)
        assert reqs, sc.name
        assert all(r.cls.has_slo for r in reqs)  # refusing work always costs attainment


def test_resolve_config_names_and_overrides() -> None:
    assert resolve_config("vcp_best", None, None, None) == project_best()
    assert resolve_config("round-robin", None, None, None).baseline
    custom = resolve_config("vcp_best", "priority", "locality", 64)
    assert (custom.policy, custom.strategy, custom.concurrency_per_capacity) == (
        "priority",
        "locality",
        64,
    )
    with pytest.raises(ValueError, match="valid"):
        resolve_config("nope", None, None, None)
    with pytest.raises(ValueError, match="valid"):
        resolve_config("vcp_best", "nope", None, None)


runner = CliRunner()


def test_cli_list_and_unknown_scenario() -> None:
    res = runner.invoke(app, ["bench", "list"])
    assert res.exit_code == 0
    assert "heterogeneous" in res.output and "vcp_best" in res.output
    assert "sglang_cache_aware" in res.output
    bad = runner.invoke(app, ["bench", "run", "--scenario", "nope"])
    assert bad.exit_code == 2 and "valid" in bad.output


def test_cli_run_and_compare_write_results(tmp_path: Path) -> None:
    res = runner.invoke(
        app,
        [
            "bench",
            "run",
            "--scenario",
            "azure",
            "--config",
            "round_robin",
            "--duration",
            "5",
            "--out",
            str(tmp_path),
            "--no-plots",
        ],
    )
    assert res.exit_code == 0, res.output
    run = json.loads((tmp_path / "azure" / "round_robin" / "run.json").read_text())
    assert run["summary"]["requests"] == len(run["outcomes"]) > 0
    res = runner.invoke(
        app,
        [
            "bench",
            "compare",
            "--scenario",
            "multiturn",
            "--duration",
            "5",
            "--max-runs",
            "2",
            "--jobs",
            "1",
            "--baselines",
            "round_robin",
            "--out",
            str(tmp_path),
            "--no-plots",
        ],
    )
    assert res.exit_code == 0, res.output
    assert (tmp_path / "multiturn.md").read_text().count("|") > 10

"""A short scenario end to end (compare + artifacts), and the ``vcp bench`` commands."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console
from rich.progress import Progress
from typer.testing import CliRunner

from vllm_control_plane.bench.artifacts import write_comparison
from vllm_control_plane.bench.compare import compare
from vllm_control_plane.bench.progress import CompareProgress
from vllm_control_plane.bench.report import summarize
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


def test_jobs_2_gives_the_numbers_of_jobs_1_and_moves_the_progress_bars() -> None:
    sc = get_scenario("priorities")
    configs = [project_best(), baseline("random")]

    def run(jobs: int):
        probes: list[tuple[str, float]] = []
        prog = Progress(console=Console(file=io.StringIO()))
        bars = CompareProgress(prog, [c.name for c in configs], max_runs=2)

        def on_probe(name, p) -> None:
            probes.append((name, p.multiplier))
            bars.probe(name, p)

        comp = compare(
            sc, configs, duration_s=4, max_runs=2, jobs=jobs, on_probe=on_probe, on_done=bars.done
        )
        return comp, sorted(probes), [bars.completed(c.name) for c in configs]

    serial, serial_probes, serial_bars = run(1)
    parallel, parallel_probes, parallel_bars = run(2)
    assert serial_probes == parallel_probes and len(serial_probes) == 4  # every probe heard
    assert serial_bars == parallel_bars == [3, 3]  # max_runs probes + the reference run
    for a, b in zip(serial.entries, parallel.entries, strict=True):
        assert a.goodput.to_dict() | {"probes": None} == b.goodput.to_dict() | {"probes": None}
        assert [p.attainment for p in a.goodput.probes] == [p.attainment for p in b.goodput.probes]
        assert a.reference is not None and b.reference is not None
        assert a.reference.outcomes == b.reference.outcomes
        sa, sb = summarize(a.reference), summarize(b.reference)
        sa.pop("wall_s"), sb.pop("wall_s")
        assert sa == sb


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


def azure_row(i: int) -> str:
    """Every 2 s from 18:15:00.5 UTC, ISO with a zone; growing prompts and outputs."""
    return f"2023-11-16T18:{15 + i // 60:02d}:{i % 60:02d}.5+00:00,{300 + 7 * i},{20 + i}\n"


AZURE_ROWS = "".join(azure_row(i) for i in range(0, 120, 2))


def test_cli_run_replays_any_trace_file_with_speedup_and_sample(tmp_path: Path) -> None:
    azure = tmp_path / "mine.csv"
    azure.write_text("\ufeffTIMESTAMP,ContextTokens,GeneratedTokens\n" + AZURE_ROWS)
    moon = tmp_path / "moon.jsonl"
    rows = [
        {"timestamp": 500 * i, "input_length": 900, "output_length": 30, "hash_ids": [0, 1, i + 2]}
        for i in range(40)
    ]
    moon.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    common = ["--config", "round_robin", "--out", str(out), "--no-plots"]
    res = runner.invoke(app, ["bench", "run", "--trace", str(azure), *common])
    assert res.exit_code == 0, res.output
    full = json.loads((out / "mine" / "round_robin" / "run.json").read_text())
    assert full["summary"]["requests"] == 60  # the whole trace by default
    assert full["scenario"] == "mine"
    res = runner.invoke(
        app,
        ["bench", "run", "--trace", str(azure), "--speedup", "2", "--sample", "0.5", *common],
    )
    assert res.exit_code == 0, res.output
    thin = json.loads((out / "mine" / "round_robin" / "run.json").read_text())
    assert 15 <= thin["summary"]["requests"] <= 45
    assert thin["summary"]["offered_rate"] == pytest.approx(
        2 * thin["summary"]["requests"] / 60 * full["summary"]["offered_rate"], rel=0.1
    )
    assert max(o["arrival"] for o in thin["outcomes"]) < 60  # 2x faster than 118 s
    res = runner.invoke(
        app, ["bench", "run", "--trace", str(moon), "--limit", "10", "--duration", "30", *common]
    )
    assert res.exit_code == 0, res.output
    moon_run = json.loads((out / "moon" / "round_robin" / "run.json").read_text())
    assert moon_run["summary"]["requests"] == 10
    assert moon_run["summary"]["prefix_hit_rate"] > 0  # Mooncake blocks shared (format detected)
    bad = runner.invoke(app, ["bench", "run", "--scenario", "priorities", "--speedup", "2"])
    assert bad.exit_code == 2 and "trace replays" in bad.output
    bad = runner.invoke(app, ["bench", "run"])
    assert bad.exit_code == 2 and "--trace" in bad.output


def test_cli_goodput_writes_the_attainment_plot(tmp_path: Path) -> None:
    azure = tmp_path / "g.csv"
    azure.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + AZURE_ROWS)
    res = runner.invoke(
        app,
        ["bench", "run", "--trace", str(azure), "--config", "round_robin", "--goodput",
         "--duration", "20", "--out", str(tmp_path)],
    )  # fmt: skip
    assert res.exit_code in (0, 1), res.output
    target = tmp_path / "g" / "round_robin"
    assert (target / "attainment.png").stat().st_size > 1000
    g = json.loads((target / "goodput.json").read_text())
    assert g["config"] == "round_robin" and g["probes"]


def test_cli_live_rejects_malformed_tenant_keys() -> None:
    res = runner.invoke(
        app,
        ["bench", "live", "--url", "http://127.0.0.1:9", "--workload", "priorities",
         "--tenant-key", "nokey"],
    )  # fmt: skip
    assert res.exit_code == 2 and "TENANT=KEY" in res.output
    res = runner.invoke(
        app,
        ["bench", "live", "--url", "http://127.0.0.1:9", "--workload", "priorities",
         "--tenant-key", "ghost=k", "--duration", "2"],
    )  # fmt: skip
    assert res.exit_code == 2 and "ghost" in res.output and "classes: critical" in res.output

"""The targets summary: verdicts computed from the goodputs a comparison measured."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from vllm_control_plane.bench.targets import row, summary_table
from vllm_control_plane.cli import app


def _result(scenario: str, ours: float, **baselines: float) -> dict:
    def cfg(name: str, rate: float, baseline: bool) -> dict:
        return {"name": name, "baseline": baseline,
                "goodput": {"rate": rate, "rejection_rate": 0.01}}  # fmt: skip

    configs = [cfg("vcp_best", ours, False)]
    configs += [cfg(name, rate, True) for name, rate in baselines.items()]
    return {"scenario": scenario, "configs": configs}


def test_verdicts_follow_the_measured_ratios() -> None:
    met = row(_result("multiturn", 30.0, round_robin=10.0, sglang_cache_aware=20.0))
    assert met[2] == "sglang_cache_aware 20.00"
    assert met[3] == "1.50× ✓" and met[4] == "3.00× ✓" and met[5] == "1.0%"
    missed = row(_result("azure", 11.0, round_robin=10.0, least_request=10.0))
    assert missed[3] == "1.10× ✗ (-15%)" and missed[4] == "1.10× ✗ (-45%)"
    # scenarios without the 1.3x goal only need to stay within 5 % of the best baseline
    assert row(_result("priorities", 9.6, round_robin=10.0))[3] == "0.96× ✓"
    assert row(_result("priorities", 9.4, round_robin=10.0))[3].startswith("0.94× ✗")


def test_summary_command_reads_a_compare_output_directory(tmp_path: Path) -> None:
    for res in (
        _result("multiturn", 30.0, round_robin=10.0),
        _result("azure", 5.0, round_robin=5.0),
    ):
        (tmp_path / f"{res['scenario']}.json").write_text(json.dumps(res))
    out = CliRunner().invoke(app, ["bench", "summary", "--out", str(tmp_path)])
    assert out.exit_code == 0, out.output
    text = (tmp_path / "summary.md").read_text()
    assert text.index("| multiturn") < text.index("| azure")  # scenario order, not file order
    assert (
        text
        == summary_table(
            [json.loads((tmp_path / f"{n}.json").read_text()) for n in ("multiturn", "azure")]
        )
        + "\n"
    )
    empty = CliRunner().invoke(app, ["bench", "summary", "--out", str(tmp_path / "none")])
    assert empty.exit_code != 0 and "no comparison results" in empty.output

"""PNG plots with matplotlib's Agg backend (no display needed): latency CDFs, attainment vs rate,
per-instance load over time.

matplotlib is in the ``bench`` extra; importing this module without it raises an ImportError
that says how to install it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from vllm_control_plane.bench.goodput import TARGET, Goodput
from vllm_control_plane.bench.results import RunResult

try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("plots need matplotlib: pip install 'vllm-control-plane[bench]'") from exc


def _style(name: str, highlight: Sequence[str]) -> dict[str, object]:
    return {
        "linewidth": 2.4 if name in highlight else 1.1,
        "alpha": 1.0 if name in highlight else 0.75,
    }


def latency_cdfs(
    runs: Mapping[str, RunResult], path: Path, highlight: Sequence[str] = (), title: str = ""
) -> Path:
    """TTFT, TPOT and E2E CDFs of completed requests, one line per configuration."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, attr, label in zip(axes, ("ttft", "tpot", "e2e"), ("TTFT", "TPOT", "E2E"), strict=True):
        for name, run in runs.items():
            vals = np.sort([getattr(o, attr) for o in run.outcomes if getattr(o, attr) is not None])
            if len(vals) == 0:
                continue
            y = np.arange(1, len(vals) + 1) / len(vals)
            ax.plot(vals * 1e3, y, label=name, **_style(name, highlight))
        ax.set_xscale("log")
        ax.set_xlabel(f"{label} (ms, log)")
        ax.set_ylabel("share of completed requests")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower right")
    fig.suptitle(title or "Latency CDFs")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def attainment_vs_rate(
    goodputs: Mapping[str, Goodput], path: Path, highlight: Sequence[str] = (), title: str = ""
) -> Path:
    """SLO attainment of every goodput probe against its offered rate."""
    fig, ax = plt.subplots(figsize=(8, 4.8))
    for name, g in goodputs.items():
        pts = sorted(g.probes, key=lambda p: p.rate)
        if not pts:
            continue
        ax.plot(
            [p.rate for p in pts],
            [p.attainment for p in pts],
            marker="o",
            markersize=3,
            label=name,
            **_style(name, highlight),
        )
    ax.axhline(TARGET, color="black", linestyle="--", linewidth=0.8)
    ax.set_xlabel("offered rate (requests/s)")
    ax.set_ylabel("SLO attainment")
    ax.set_ylim(0, 1.02)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title or "SLO attainment vs rate (dashed: 90 % target)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def instance_load(runs: Mapping[str, RunResult], path: Path, title: str = "") -> Path:
    """Outstanding requests (running + waiting) per instance over time, one panel per run."""
    runs = {k: v for k, v in runs.items() if v.load is not None and v.load.times}
    fig, axes = plt.subplots(len(runs), 1, figsize=(11, 3.2 * max(1, len(runs))), squeeze=False)
    for ax, (name, run) in zip(axes[:, 0], runs.items(), strict=False):
        load = run.load
        assert load is not None
        data = np.asarray(load.outstanding, dtype=float)
        for k, iid in enumerate(load.instances):
            ax.plot(load.times, data[:, k], linewidth=0.8, label=iid)
        ax.set_title(name, fontsize=9)
        ax.set_ylabel("running + waiting")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6, ncol=4, loc="upper right")
    axes[-1, 0].set_xlabel("time (s)")
    fig.suptitle(title or "Per-instance load over time")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

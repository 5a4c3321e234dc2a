"""``vcp bench``: list, run, compare (virtual time) and live (any OpenAI-compatible URL).

Heavy imports happen inside the commands, so ``vcp --help`` stays fast.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from vllm_control_plane.bench.scenarios import Scenario
    from vllm_control_plane.bench.workloads import Workload

bench_app = typer.Typer(
    name="bench",
    help="Benchmarks: the project's policies against baseline routers (docs/bench.md).",
    no_args_is_help=True,
    add_completion=False,
)

DEFAULT_OUT = Path("bench-results")


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


@bench_app.command("list")
def list_cmd() -> None:
    """Scenarios, the project's configuration, baselines, policies and strategies."""
    from vllm_control_plane.bench.scenarios import SCENARIOS
    from vllm_control_plane.bench.setup import baselines, project_best
    from vllm_control_plane.core.policies import POLICIES
    from vllm_control_plane.core.routing import strategy_names

    typer.echo("scenarios:")
    for s in SCENARIOS.values():
        typer.echo(f"  {s.name:18s} {s.title} — {s.fleet.label()}")
    best = project_best()
    typer.echo(f"project configuration:\n  {best.name:18s} {best.policy} + {best.strategy}")
    typer.echo("baselines (fifo, forward everything at once):")
    typer.echo("  " + ", ".join(b.strategy for b in baselines()))
    typer.echo("policies:   " + ", ".join(POLICIES))
    typer.echo("strategies: " + ", ".join(strategy_names()))


def _trace_workload(
    sc_name: str | None,
    trace: Path | None,
    *,
    seed: int,
    traces_dir: Path | None,
    speedup: float,
    sample: float,
    limit: int | None,
    max_model_len: int | None,
) -> tuple[Scenario, Workload, str]:
    """(scenario, workload, run name) for ``vcp bench run``.

    With ``trace``: the file (format detected) replayed on a scenario's fleet with its SLO
    classes — the named one, else the ``azure`` or ``mooncake`` scenario by format — prompts
    clipped to the fleet's smallest context. Without: the scenario's own workload, a trace
    replay re-built with ``speedup`` / ``sample`` / ``limit`` if given."""
    from vllm_control_plane.bench.scenarios import MOONCAKE_CLASSES, TRACE_CLASSES, get_scenario
    from vllm_control_plane.bench.traces import detect_format
    from vllm_control_plane.bench.workloads import TraceWorkload
    from vllm_control_plane.sim.profiles import get_model

    scaled = speedup != 1.0 or sample != 1.0 or limit is not None or max_model_len is not None
    if trace is None:
        if sc_name is None:
            raise ValueError("give --scenario or --trace")
        sc = get_scenario(sc_name)
        wl = sc.workload(seed, traces_dir)
        if scaled:
            if not isinstance(wl, TraceWorkload):
                raise ValueError(
                    "--speedup, --sample, --limit and --max-model-len apply to trace replays "
                    f"(--trace, or the azure / mooncake scenarios), not {sc.name!r}"
                )
            changes: dict[str, object] = {"speedup": speedup, "sample": sample, "limit": limit}
            if max_model_len is not None:
                changes["max_model_len"] = max_model_len
            wl = wl.variant(**changes)
        return sc, wl, sc.name
    fmt = detect_format(trace)
    sc = get_scenario(sc_name or fmt)
    trace_classes = {"azure": TRACE_CLASSES, "mooncake": MOONCAKE_CLASSES}
    if sc.name in trace_classes:
        classes = trace_classes[sc.name]
    else:  # a synthetic or chat scenario's classes (its SLOs and priorities)
        classes = sc.workload(seed, traces_dir).spec.classes  # type: ignore[attr-defined]
    context = max_model_len or min(
        g.max_model_len or get_model(g.model).context_len for g in sc.fleet.groups
    )
    wl = TraceWorkload(
        trace,
        fmt=fmt,
        speedup=speedup,
        sample=sample,
        classes=classes,
        max_model_len=context,
        seed=seed,
        limit=limit,
    )
    return sc, wl, trace.stem


@bench_app.command("run")
def run_cmd(
    scenario: str | None = typer.Option(
        None, help="Scenario name (vcp bench list); with --trace, its fleet and SLOs."
    ),
    trace: Path | None = typer.Option(
        None,
        help="Replay this Azure CSV or Mooncake JSONL file (format detected) on the scenario's "
        "fleet (default: the azure or mooncake scenario, by format).",
    ),
    config: str = typer.Option(
        "vcp_best", help="vcp_best, or a baseline's name; --policy/--strategy override it."
    ),
    policy: str | None = typer.Option(None, help="Scheduling policy (fifo, slo_aware, ...)."),
    strategy: str | None = typer.Option(None, help="Routing strategy (predictive, ...)."),
    concurrency: float | None = typer.Option(
        None, min=0.01, help="Requests in flight per instance, per A100-80G of capacity."
    ),
    rate: float | None = typer.Option(None, min=0.0001, help="Offered requests/s (mean)."),
    multiplier: float | None = typer.Option(None, min=0.0001, help="Rate multiplier."),
    duration: float | None = typer.Option(
        None, min=1.0, help="Seconds of arrivals (default: the scenario's; --trace: all of it)."
    ),
    speedup: float = typer.Option(1.0, min=1e-6, help="Trace replay: compress time this much."),
    sample: float = typer.Option(
        1.0, min=1e-6, max=1.0, help="Trace replay: keep this share of requests (seeded)."
    ),
    limit: int | None = typer.Option(None, min=1, help="Trace replay: the first N records."),
    max_model_len: int | None = typer.Option(
        None, min=2, help="Trace replay: context to clip to (default: the fleet's)."
    ),
    seed: int = typer.Option(0, help="Seed of the workload and the router."),
    goodput: bool = typer.Option(False, help="Search the goodput instead of one run."),
    out: Path = typer.Option(DEFAULT_OUT, help="Output directory."),
    plots: bool = typer.Option(True, help="Write PNG plots."),
    traces_dir: Path | None = typer.Option(None, help="Directory of the shared traces."),
) -> None:
    """One virtual-time run (or a goodput search) of one configuration on a scenario or trace."""
    from vllm_control_plane.bench import artifacts
    from vllm_control_plane.bench.compare import probe_runner
    from vllm_control_plane.bench.goodput import search
    from vllm_control_plane.bench.progress import run_progress
    from vllm_control_plane.bench.report import run_table, summarize
    from vllm_control_plane.bench.setup import resolve_config

    try:
        sc, wl, name = _trace_workload(
            scenario,
            trace,
            seed=seed,
            traces_dir=traces_dir,
            speedup=speedup,
            sample=sample,
            limit=limit,
            max_model_len=max_model_len,
        )
        cfg = resolve_config(config, policy, strategy, concurrency)
    except (ValueError, OSError) as e:
        raise _fail(str(e)) from None
    if trace is not None:
        m = multiplier or (rate / wl.base_rate if rate else 1.0)
        span = getattr(wl, "span_s", 0.0)
        window = duration or max(1.0, span / m * (1 + 1e-9) + 1e-6)  # every record
    else:
        m = multiplier or (rate / wl.base_rate if rate else sc.start_multiplier)
        window = duration or sc.duration_s
    run_at = probe_runner(sc, wl, cfg, seed, window)
    target = out / name / cfg.name
    if goodput:
        g = search(
            run_at,
            start=m,
            on_probe=lambda p: typer.echo(
                f"  ×{p.multiplier:.3g}: {p.rate:.2f} req/s, attainment {p.attainment:.1%}"
                f"{' (stopped early)' if p.aborted else ''}, rejected {p.rejection_rate:.1%}"
            ),
        )
        for path in artifacts.write_goodput(g, cfg.name, target, plots=plots, title=sc.title):
            typer.echo(f"wrote {path}")
        if g.rate is None:
            typer.echo(f"{cfg.name}: no probe reached 90 % attainment")
            raise typer.Exit(1)
        typer.echo(
            f"{cfg.name}: goodput {g.rate:.2f} req/s (×{g.multiplier:.3g}), "
            f"rejected {g.rejection_rate:.1%}"
        )
        m = g.multiplier or m
    reqs = wl.requests(window, m)
    if not reqs:
        raise _fail(f"no request arrives within {window:g} s at ×{m:g}")
    with run_progress(f"{name}: {cfg.name}") as tick:
        from vllm_control_plane.bench.runner_virtual import run_virtual

        result = run_virtual(
            sc.fleet,
            cfg,
            reqs,
            scenario=name,
            seed=seed,
            multiplier=m,
            duration_s=window,
            progress=tick,
        )
    typer.echo(run_table([summarize(result)]))
    for path in artifacts.write_run(result, target, plots=plots):
        typer.echo(f"wrote {path}")
    del run_at


@bench_app.command("compare")
def compare_cmd(
    scenario: str = typer.Option(..., help="Scenario name, or 'all'."),
    duration: float | None = typer.Option(None, min=1.0, help="Seconds of arrivals per run."),
    seed: int = typer.Option(0, help="Seed of the workload and the routers."),
    max_runs: int = typer.Option(8, min=2, help="Runs per goodput search."),
    jobs: int = typer.Option(2, min=1, help="Configurations searched in parallel processes."),
    baselines: str | None = typer.Option(None, help="Comma-separated baselines (default: all)."),
    out: Path = typer.Option(DEFAULT_OUT, help="Output directory."),
    plots: bool = typer.Option(True, help="Write PNG plots."),
    traces_dir: Path | None = typer.Option(None, help="Directory of the shared traces."),
) -> None:
    """The project's best configuration against every baseline: goodput, latencies, plots."""
    from vllm_control_plane.bench import artifacts
    from vllm_control_plane.bench.compare import compare
    from vllm_control_plane.bench.progress import compare_progress
    from vllm_control_plane.bench.scenarios import SCENARIOS, get_scenario
    from vllm_control_plane.bench.setup import baseline, project_best
    from vllm_control_plane.core.routing import BASELINES

    try:
        names = list(SCENARIOS) if scenario == "all" else [get_scenario(scenario).name]
        base = [baseline(b) for b in (baselines.split(",") if baselines else BASELINES)]
    except ValueError as e:
        raise _fail(str(e)) from None
    configs = [project_best(), *base]
    for name in names:
        sc = SCENARIOS[name]
        with compare_progress(sc.title, [c.name for c in configs], max_runs) as prog:
            try:
                comp = compare(
                    sc,
                    configs,
                    seed=seed,
                    duration_s=duration,
                    max_runs=max_runs,
                    traces_dir=traces_dir,
                    jobs=jobs,
                    on_probe=prog.probe,
                    on_done=prog.done,
                )
            except OSError as e:
                raise _fail(str(e)) from None
        typer.echo(comp.markdown())
        for path in artifacts.write_comparison(comp, out, plots=plots):
            typer.echo(f"wrote {path}")
    _write_summary(out)


def _write_summary(out: Path) -> None:
    """``summary.md``: the targets checked on every scenario compared into ``out`` so far."""
    from vllm_control_plane.bench.scenarios import SCENARIOS
    from vllm_control_plane.bench.targets import load, summary_table

    results = load(out, SCENARIOS)
    if not results:
        raise _fail(f"no comparison results (<scenario>.json) in {out}")
    table = summary_table(results)
    path = out / "summary.md"
    path.write_text(table + "\n")
    typer.echo(table)
    typer.echo(f"wrote {path}")


@bench_app.command("summary")
def summary_cmd(
    out: Path = typer.Option(DEFAULT_OUT, help="Directory a `vcp bench compare` wrote."),
) -> None:
    """The targets (× best baseline, × round robin) checked on the comparisons in ``--out``."""
    _write_summary(out)


def _tenant_keys(pairs: list[str]) -> dict[str, str]:
    keys: dict[str, str] = {}
    for pair in pairs:
        tenant, sep, key = pair.partition("=")
        if not sep or not tenant.strip() or not key.strip():
            raise ValueError(f"--tenant-key wants TENANT=KEY, got {pair!r}")
        keys[tenant.strip()] = key.strip()
    return keys


@bench_app.command("live")
def live_cmd(
    url: str = typer.Option(..., help="Base URL of an OpenAI-compatible server or gateway."),
    workload: str = typer.Option(
        ..., help="A scenario name (its workload and SLOs) or a trace file (Azure CSV / Mooncake)."
    ),
    rate: float | None = typer.Option(None, min=0.0001, help="Offered requests/s (mean)."),
    multiplier: float = typer.Option(1.0, min=0.0001, help="Rate multiplier (without --rate)."),
    duration: float = typer.Option(60.0, min=1.0, help="Seconds of arrivals."),
    speedup: float = typer.Option(1.0, min=1e-6, help="Trace replay: compress time this much."),
    sample: float = typer.Option(
        1.0, min=1e-6, max=1.0, help="Trace replay: keep this share of requests (seeded)."
    ),
    limit: int | None = typer.Option(None, min=1, help="Trace replay: the first N records."),
    seed: int = typer.Option(0, help="Seed of the workload."),
    model: str | None = typer.Option(None, help="Model name (default: the server's first)."),
    max_model_len: int = typer.Option(
        8192, min=2, help="The server's context: trace prompts clipped to it, max_tokens capped."
    ),
    reserve_tokens: int = typer.Option(
        16, min=0, help="Trace replay: context left free for the tokens the server adds (BOS)."
    ),
    timeout: float = typer.Option(600.0, min=1.0, help="Seconds before a request is abandoned."),
    api_key: str | None = typer.Option(None, help="Bearer token for the server."),
    tenant_key: list[str] = typer.Option(
        [],
        help="TENANT=KEY (repeatable): requests of classes with that tenant — or of the class "
        "named TENANT, which then becomes that tenant — are sent with KEY; attainment is "
        "reported per tenant.",
    ),
    usd_per_hour: float | None = typer.Option(
        None, min=0.0, help="The fleet's price per hour, for the cost figures (default: none)."
    ),
    out: Path = typer.Option(DEFAULT_OUT, help="Output directory."),
    plots: bool = typer.Option(True, help="Write PNG plots."),
    traces_dir: Path | None = typer.Option(None, help="Directory of the shared traces."),
) -> None:
    """Send a workload to a live server and measure TTFT, TPOT, ITL and E2E from the stream."""
    from vllm_control_plane.bench import artifacts
    from vllm_control_plane.bench.progress import run_progress
    from vllm_control_plane.bench.report import run_table, summarize
    from vllm_control_plane.bench.runner_live import (
        LiveOptions,
        assign_tenants,
        fit_to_context,
        live_workload,
        run_live,
    )

    try:
        keys = _tenant_keys(tenant_key)
        name, wl = live_workload(
            workload,
            seed,
            max_model_len,
            traces_dir,
            speedup=speedup,
            sample=sample,
            limit=limit,
            reserve_tokens=reserve_tokens,
        )
        m = rate / wl.base_rate if rate else multiplier
        reqs = fit_to_context(wl.requests(duration, m), max_model_len, reserve_tokens)
        reqs = assign_tenants(reqs, list(keys))
    except (ValueError, OSError) as e:
        raise _fail(str(e)) from None
    opts = LiveOptions(
        model=model, timeout_s=timeout, api_key=api_key, tenant_keys=keys, usd_per_hour=usd_per_hour
    )
    with run_progress(f"live {url}: {name}") as tick:
        try:
            result = asyncio.run(
                run_live(
                    url, reqs, opts, scenario=name, multiplier=m, duration_s=duration, progress=tick
                )
            )
        except OSError as e:
            raise _fail(f"cannot reach {url}: {e}") from None
    typer.echo(run_table([summarize(result)]))
    for path in artifacts.write_run(result, out / f"live-{name}", plots=plots):
        typer.echo(f"wrote {path}")

"""The ``vcp`` command line: one typer app, a subcommand per job."""

from __future__ import annotations

import typer

from vllm_control_plane import __version__

app = typer.Typer(
    name="vcp",
    help="vLLM control plane: simulator, gateway and benchmarks for fleets of vLLM servers.",
    no_args_is_help=True,
    add_completion=False,
)


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


if __name__ == "__main__":  # pragma: no cover
    app()

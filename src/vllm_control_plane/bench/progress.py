"""Rich progress bars for long benchmark commands (the library functions only take callbacks)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from vllm_control_plane.bench.goodput import Probe


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[note]}"),
        TimeElapsedColumn(),
        transient=False,
    )


@contextmanager
def run_progress(description: str) -> Iterator[Callable[[float], None]]:
    """A bar over the share of arrivals submitted; yields the callback for the runner."""
    with _progress() as prog:
        task = prog.add_task(description, total=1.0, note="")

        def tick(share: float) -> None:
            prog.update(task, completed=share, note=f"{share:.0%} of arrivals")

        yield tick
        prog.update(task, completed=1.0, note="done")


class CompareProgress:
    """One bar per configuration: probes of its goodput search, then its reference run.

    Works the same with ``compare --jobs N``: probes of worker processes arrive here too (a
    probe can arrive just after its search is reported done; it then only updates the note)."""

    def __init__(self, prog: Progress, names: Sequence[str], max_runs: int) -> None:
        self._prog = prog
        self._total = max_runs + 1
        self._tasks = {n: prog.add_task(n, total=self._total, note="") for n in names}
        self._probes = dict.fromkeys(names, 0)
        self._searched: set[str] = set()

    def probe(self, name: str, p: Probe) -> None:
        note = f"×{p.multiplier:.3g}: {p.attainment:.0%}{' (stopped early)' if p.aborted else ''}"
        self._probes[name] = self._probes.get(name, 0) + 1
        if name in self._searched:
            return
        done = min(self._probes[name], self._total - 1)
        self._prog.update(self._tasks[name], completed=done, note=note)

    def done(self, phase: str, name: str) -> None:
        task = self._tasks[name]
        if phase == "search":
            self._searched.add(name)
            self._prog.update(task, completed=self._total - 1, note="searched")
        else:
            self._prog.update(task, completed=self._total, note="done")

    def completed(self, name: str) -> float:
        """How far ``name``'s bar is (for tests)."""
        task = self._tasks[name]
        return next(t.completed for t in self._prog.tasks if t.id == task)


@contextmanager
def compare_progress(title: str, names: Sequence[str], max_runs: int) -> Iterator[CompareProgress]:
    with _progress() as prog:
        prog.console.print(f"[bold]{title}[/bold]")
        yield CompareProgress(prog, names, max_runs)

"""``vcp serve``'s stop signals and the bound on the whole shutdown.

The first SIGINT/SIGTERM starts the graceful shutdown (``serve`` in ``app.py``): in-flight
requests get ``server.shutdown_grace_s``, then the rest is cancelled and everything is closed.
That whole sequence is bounded by the grace period plus :data:`SHUTDOWN_MARGIN_S`: past it,
what was still pending (the step, and every task still alive with the line it waits on) is
logged and the process exits with status 1 rather than hang. A second SIGINT/SIGTERM exits at
once with 128 + the signal number, as a shell reports a process killed by it. The second signal
is caught by a plain ``signal.signal`` handler, not the event loop's: it runs even when the loop
is stuck.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import NoReturn

log = logging.getLogger(__name__)

SHUTDOWN_MARGIN_S = 15.0
"""Beyond ``server.shutdown_grace_s``: cancelling what is left, closing the engine connections,
the embedded simulators and the HTTP server's connections (its handlers get 5 s)."""

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def hard_exit(status: int) -> NoReturn:
    """Leave now: flush what was printed, skip every cleanup (the kernel closes the sockets,
    which engines see as client disconnects and abort)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(status)


def on_stop_signals(
    loop: asyncio.AbstractEventLoop,
    first: Callable[[], None],
    announce: Callable[[str], None],
    exit_now: Callable[[int], object] = hard_exit,
) -> None:
    """Call ``first`` on the first SIGINT/SIGTERM; exit at once on the next one."""

    def again(signum: int, _frame: FrameType | None) -> None:
        with contextlib.suppress(Exception):
            announce(f"second {signal.Signals(signum).name}: exiting at once")
        exit_now(128 + signum)

    def on_first() -> None:
        for sig in STOP_SIGNALS:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(sig)
                signal.signal(sig, again)
        first()

    for sig in STOP_SIGNALS:
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, on_first)


async def bounded_shutdown(
    close: Awaitable[None],
    bound_s: float,
    step: Callable[[], str],
    announce: Callable[[str], None],
) -> bool:
    """Run ``close`` for at most ``bound_s`` seconds. False: it overran; what was pending has been
    logged and announced (``close`` is left as it is: the caller exits)."""
    task = asyncio.ensure_future(close)
    done, _ = await asyncio.wait({task}, timeout=bound_s)
    if done:
        task.result()  # a failure of the shutdown itself is raised, not swallowed
        return True
    pending = pending_tasks(exclude={task, asyncio.current_task()})
    announce(f"shutdown did not finish within {bound_s:g}s (stuck at: {step() or 'start'}); "
             f"{len(pending)} task(s) still pending; exiting")  # fmt: skip
    for line in pending:
        log.error("still pending at shutdown: %s", line)
    return False


def pending_tasks(exclude: set[asyncio.Task[object] | None] | None = None) -> list[str]:
    """One line per live task: its name, coroutine and the line it waits on."""
    lines = []
    for task in asyncio.all_tasks():
        if exclude and task in exclude:
            continue
        coro = task.get_coro()
        name = getattr(coro, "__qualname__", repr(coro))
        frame = _innermost_frame(coro)
        where = f" at {frame.f_code.co_filename}:{frame.f_lineno}" if frame is not None else ""
        lines.append(f"{task.get_name()} ({name}){where}")
    return sorted(lines)


def _innermost_frame(coro: object) -> FrameType | None:
    """The frame a suspended coroutine chain waits in (``Task.get_stack`` stops at the top)."""
    frame = None
    while coro is not None:
        inner = getattr(coro, "cr_frame", None) or getattr(coro, "ag_frame", None)
        inner = inner or getattr(coro, "gi_frame", None)
        if inner is None:
            break
        frame = inner
        coro = (
            getattr(coro, "cr_await", None)
            or getattr(coro, "ag_await", None)
            or getattr(coro, "gi_yieldfrom", None)
        )
    return frame

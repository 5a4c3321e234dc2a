"""``bounded(delay)``: an ``async with`` block that raises ``TimeoutError`` after ``delay`` s.

Why not ``asyncio.wait_for``: on Python 3.11 a ``wait_for`` whose inner await completes at the
moment its task is cancelled returns normally and the cancellation is lost — a cancelled request
would then stream to its end. ``asyncio.timeout`` (3.11+) counts cancellations and never loses
one. Python 3.10 has no ``asyncio.timeout``; there the block falls back to a timer that cancels
the task and turns that cancellation into ``TimeoutError`` (same race as ``wait_for``, which 3.10
shares anyway).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator


@contextlib.asynccontextmanager
async def _bounded_310(delay: float) -> AsyncIterator[None]:
    task = asyncio.current_task()
    assert task is not None
    fired = False

    def fire() -> None:
        nonlocal fired
        fired = True
        task.cancel()

    timer = asyncio.get_running_loop().call_later(delay, fire)
    try:
        yield
    except asyncio.CancelledError:
        if fired:
            raise asyncio.TimeoutError from None
        raise
    finally:
        timer.cancel()


def bounded(delay: float) -> contextlib.AbstractAsyncContextManager[None]:
    if sys.version_info >= (3, 11):
        return asyncio.timeout(delay)
    return _bounded_310(delay)

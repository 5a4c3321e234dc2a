"""``vcp serve``: load the config (or the default embedded fleet) and run the gateway.

Kept apart from ``vllm_control_plane/cli.py`` so the command there stays a thin typer wrapper.
A bad config exits with status 2 and every offending key; a busy port exits with status 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import Callable
from pathlib import Path

from vllm_control_plane.config import ConfigError, default_config, load_config


def _install_uvloop() -> bool:
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


FULL_GC_EVERY = 100  # young (gen1) collections between full ones; CPython's default is 10


def _tune_gc() -> None:
    """Keep full garbage collections off the request path.

    A full collection walks every tracked object: the startup heap (aiohttp, pydantic, the
    tokenizer: tens of ms to walk) and the manager's bounded result history. ``gc.freeze()``
    moves the startup heap out of reach for good (it lives as long as the process anyway), and
    a full collection every 100 rather than 10 young ones makes the remaining pauses ten times
    rarer. Young collections are left as they are: they are short and reclaim request garbage."""
    gc.collect()
    gc.freeze()
    gen0, gen1, _ = gc.get_threshold()
    gc.set_threshold(gen0, gen1, FULL_GC_EVERY)


def run(
    config_path: Path | None,
    host: str | None,
    port: int | None,
    echo: Callable[[str], None] = print,
) -> int:
    """Run until SIGINT/SIGTERM; returns the process exit status (a shutdown that overruns its
    bound, or a second signal, ends the process from inside ``serve``)."""
    from vllm_control_plane.gateway.app import serve

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(config_path) if config_path is not None else default_config()
    except ConfigError as e:
        echo(f"error: {e}")
        return 2
    _install_uvloop()
    _tune_gc()
    status = 0
    try:
        with contextlib.suppress(KeyboardInterrupt):
            status = asyncio.run(
                serve(config, config_path=config_path, host=host, port=port, announce=echo)
            )
    except OSError as e:  # port in use, address not available
        echo(f"error: {e}")
        return 1
    return status

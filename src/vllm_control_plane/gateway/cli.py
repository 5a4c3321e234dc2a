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


def _freeze_startup_heap() -> None:
    """Move everything imported so far out of the collector's reach: a full collection of the
    startup heap (aiohttp, pydantic, the tokenizer, ...) costs tens of ms, a pause every request
    in flight would wait for; those objects live as long as the process anyway."""
    gc.collect()
    gc.freeze()


def run(
    config_path: Path | None,
    host: str | None,
    port: int | None,
    echo: Callable[[str], None] = print,
) -> int:
    """Run until SIGINT/SIGTERM; returns the process exit status."""
    from vllm_control_plane.gateway.app import serve

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(config_path) if config_path is not None else default_config()
    except ConfigError as e:
        echo(f"error: {e}")
        return 2
    _install_uvloop()
    _freeze_startup_heap()
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve(config, config_path=config_path, host=host, port=port, announce=echo))
    except OSError as e:  # port in use, address not available
        echo(f"error: {e}")
        return 1
    return 0

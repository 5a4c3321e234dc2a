"""``vcp serve``'s shutdown as a user meets it: SIGTERM with a stream in flight ends within the
bound with status 0; a second signal exits at once; an overrunning shutdown says what was stuck.

The subprocess tests start ``vcp serve --config FILE`` on a free 127.0.0.1 port and wait on its
output lines and the client's stream, not on sleeps.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from tests.gateway.conftest import CHAT, eventually, gateway_config, sim

from vllm_control_plane.config import parse_config
from vllm_control_plane.gateway import app as app_module
from vllm_control_plane.gateway.fleet import EmbeddedFleet
from vllm_control_plane.gateway.shutdown import SHUTDOWN_MARGIN_S, STOP_SIGNALS, bounded_shutdown

_URL = re.compile(rb"OpenAI API on (http://[\d.]+:\d+)/v1")


class Serve:
    """A ``vcp serve`` subprocess and everything it printed."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.output = bytearray()

    async def line(self, pattern: bytes, timeout: float = 60.0) -> re.Match[bytes]:
        """Read until a line matches ``pattern``."""
        assert self.proc.stdout is not None
        stdout = self.proc.stdout

        async def scan() -> re.Match[bytes]:
            while True:
                line = await stdout.readline()
                if not line:
                    raise AssertionError(f"exited before {pattern!r}:\n{self.output.decode()}")
                self.output.extend(line)
                match = re.search(pattern, line)
                if match:
                    return match

        return await asyncio.wait_for(scan(), timeout)

    async def exit_status(self, timeout: float) -> int:
        """Wait for the exit (reading the rest of the output); the status."""
        assert self.proc.stdout is not None
        rest = await asyncio.wait_for(self.proc.stdout.read(), timeout)
        self.output.extend(rest)
        return await asyncio.wait_for(self.proc.wait(), timeout)


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[Any]:
    procs: list[Serve] = []

    async def start(grace_s: float) -> tuple[Serve, str]:
        path = tmp_path / "cluster.yaml"
        path.write_text(yaml.safe_dump({
            "server": {"shutdown_grace_s": grace_s},
            "simulated": [sim("sim-a", time_scale=1.0)],
        }))  # fmt: skip
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "vllm_control_plane.cli", "serve", "--config", str(path),
            "--host", "127.0.0.1", "--port", "0",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        served = Serve(proc)
        procs.append(served)
        url = (await served.line(_URL.pattern)).group(1).decode()
        return served, url

    yield start
    for served in procs:
        if served.proc.returncode is None:
            served.proc.kill()
            await served.proc.wait()


class _Stream:
    """A streamed chat completion read in the background; ``started`` once a frame is in."""

    def __init__(self, http: aiohttp.ClientSession, url: str, max_tokens: int) -> None:
        self.started = asyncio.Event()
        self.body = bytearray()
        self.task = asyncio.create_task(self._run(http, url, max_tokens))

    async def _run(self, http: aiohttp.ClientSession, url: str, max_tokens: int) -> None:
        body = {"model": "llama-3-8b", "messages": CHAT, "max_tokens": max_tokens,
                "ignore_eos": True, "stream": True}  # fmt: skip
        async with http.post(url + "/v1/chat/completions", json=body) as resp:
            assert resp.status == 200
            async for chunk in resp.content.iter_any():
                self.body.extend(chunk)
                self.started.set()


async def test_sigterm_lets_the_stream_finish_and_exits_0(serve, http) -> None:
    served, url = await serve(grace_s=30)
    stream = _Stream(http, url, 150)  # ~1 s of decoding at real time
    await asyncio.wait_for(stream.started.wait(), 30)
    began = time.monotonic()
    served.proc.send_signal(signal.SIGTERM)
    await served.line(rb"shutting down: finishing 1 in-flight")
    assert await served.exit_status(30 + SHUTDOWN_MARGIN_S) == 0
    assert time.monotonic() - began < 30 + SHUTDOWN_MARGIN_S
    await asyncio.wait_for(stream.task, 10)
    assert stream.body.endswith(b"data: [DONE]\n\n") and b'"error"' not in stream.body
    assert b"stopped" in served.output


async def test_sigterm_past_the_grace_period_cancels_and_exits_in_bound(serve, http) -> None:
    served, url = await serve(grace_s=0.5)
    stream = _Stream(http, url, 4000)  # far longer than the grace period
    await asyncio.wait_for(stream.started.wait(), 30)
    began = time.monotonic()
    served.proc.send_signal(signal.SIGTERM)
    assert await served.exit_status(0.5 + SHUTDOWN_MARGIN_S) == 0
    assert time.monotonic() - began < 0.5 + SHUTDOWN_MARGIN_S
    await asyncio.wait_for(stream.task, 10)
    # the cut stream says why (never a silent truncation)
    assert b'"code":"request_cancelled"' in stream.body
    assert stream.body.endswith(b"data: [DONE]\n\n")
    assert b"still running after 0.5s: cancelling" in served.output


async def test_a_second_signal_exits_at_once(serve, http) -> None:
    served, url = await serve(grace_s=60)
    stream = _Stream(http, url, 4000)  # keeps the graceful shutdown waiting
    await asyncio.wait_for(stream.started.wait(), 30)
    served.proc.send_signal(signal.SIGTERM)
    await served.line(rb"shutting down: finishing 1 in-flight")
    began = time.monotonic()
    served.proc.send_signal(signal.SIGINT)
    assert await served.exit_status(10) == 128 + signal.SIGINT
    assert time.monotonic() - began < 10  # not the 60 s grace period
    assert b"second SIGINT: exiting at once" in served.output
    with pytest.raises(aiohttp.ClientError):  # the stream ends with the process
        await asyncio.wait_for(stream.task, 10)


async def test_an_overrunning_shutdown_names_what_was_stuck(caplog) -> None:
    said: list[str] = []
    hung = asyncio.Event()

    async def stuck_close() -> None:
        await asyncio.create_task(hung.wait(), name="engine-pool-close")

    with caplog.at_level(logging.ERROR, logger="vllm_control_plane.gateway.shutdown"):
        finished = await bounded_shutdown(stuck_close(), 0.05, lambda: "closing the pool",
                                          said.append)  # fmt: skip
    assert finished is False
    assert said and "within 0.05s (stuck at: closing the pool)" in said[0]
    pending = [r.getMessage() for r in caplog.records]
    assert any("engine-pool-close (Event.wait) at " in line and "locks.py" in line
               for line in pending), pending  # fmt: skip
    hung.set()


async def test_a_shutdown_within_its_bound_reports_success() -> None:
    async def quick_close() -> None:
        await asyncio.sleep(0)

    assert await bounded_shutdown(quick_close(), 5, lambda: "", print) is True


async def test_serve_exits_with_1_when_the_shutdown_overruns_its_bound(monkeypatch) -> None:
    """serve() itself, over a fleet whose close hangs: the bound fires, names the step and
    ends the process (``exit_now``) instead of waiting forever."""
    release, closed = asyncio.Event(), asyncio.Event()
    close = EmbeddedFleet.close

    async def hanging_close(self: EmbeddedFleet) -> None:
        await release.wait()
        await close(self)
        closed.set()

    monkeypatch.setattr(EmbeddedFleet, "close", hanging_close)
    monkeypatch.setattr(app_module, "SHUTDOWN_MARGIN_S", 0.3)
    config = parse_config(gateway_config(simulated=[sim("one")], server={"shutdown_grace_s": 0}))
    said: list[str] = []
    exits: list[int] = []
    loop = asyncio.get_running_loop()
    saved = {sig: signal.getsignal(sig) for sig in (*STOP_SIGNALS, signal.SIGHUP)}
    try:
        task = asyncio.create_task(app_module.serve(config, port=0, announce=said.append,
                                                    exit_now=exits.append))  # fmt: skip
        await eventually(lambda: any("OpenAI API on" in line for line in said), 30)
        os.kill(os.getpid(), signal.SIGTERM)
        status = await asyncio.wait_for(task, 30)
    finally:
        loop.remove_signal_handler(signal.SIGHUP)
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)
        for sig, handler in saved.items():
            signal.signal(sig, handler)
        release.set()  # let the real close run: nothing of the test is left behind
    await asyncio.wait_for(closed.wait(), 30)
    assert status == 1 and exits == [1]
    assert any("shutdown did not finish within 0.3s (stuck at: stopping the embedded simulated "
               "fleet (1 server(s)))" in line for line in said), said  # fmt: skip
    assert "stopped" not in said

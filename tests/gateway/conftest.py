"""Fixtures for gateway tests: a gateway over an embedded simulated fleet on a free port."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from vllm_control_plane.config import parse_config
from vllm_control_plane.gateway import Gateway, GatewayServer

ADMIN_TOKEN = "admin-test-token"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
CHAT = [{"role": "user", "content": "Say something."}]

StartGateway = Callable[..., Awaitable[GatewayServer]]


def sim(name: str, time_scale: float = 0.02, **extra: Any) -> dict[str, Any]:
    """A simulated Llama-3-8B on one H100 with short natural outputs."""
    return {
        "name": name,
        "model": "llama-3-8b",
        "time_scale": time_scale,
        "mean_output_tokens": 8.0,
        **extra,
    }


def gateway_config(**overrides: Any) -> dict[str, Any]:
    """A config with an admin token, fast monitoring and two simulated servers by default."""
    base: dict[str, Any] = {
        "admin": {"token": ADMIN_TOKEN},
        "monitor": {"health_interval_s": 0.05, "scrape_interval_s": 0.05,
                    "unhealthy_threshold": 1, "healthy_threshold": 1},
        "simulated": [sim("sim-a"), sim("sim-b", seed=7)],
    }  # fmt: skip
    base.update(overrides)
    return base


@pytest.fixture
async def start_gateway() -> AsyncIterator[StartGateway]:
    """``await start_gateway(**config_overrides)``: a started gateway, closed after the test."""
    servers: list[GatewayServer] = []

    async def start(**overrides: Any) -> GatewayServer:
        server = GatewayServer(Gateway(parse_config(gateway_config(**overrides))), port=0)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def eventually(cond: Callable[[], Any], timeout: float = 10.0, what: str = "") -> None:
    """Poll ``cond`` (sync or async) until truthy; a bound on a condition, not a timing bet."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or cond}")
        await asyncio.sleep(0.01)


async def read_until(
    proc: asyncio.subprocess.Process, pattern: re.Pattern[bytes], timeout: float = 60.0
) -> tuple[bytes, bytes]:
    """Lines until one matches; returns (match group 1, everything read)."""
    seen = bytearray()
    assert proc.stdout is not None
    stdout = proc.stdout

    async def scan() -> bytes:
        while True:
            line = await stdout.readline()
            if not line:
                raise AssertionError(f"exited before {pattern.pattern!r}:\n{seen.decode()}")
            seen.extend(line)
            match = pattern.search(line)
            if match:
                return match.group(1)

    found = await asyncio.wait_for(scan(), timeout)
    return found, bytes(seen)

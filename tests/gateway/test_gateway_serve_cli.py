"""``vcp serve`` as a user runs it: a subprocess, talked to over HTTP with the openai client."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml
from openai import AsyncOpenAI
from tests.gateway.conftest import CHAT, read_until

_URL = re.compile(rb"OpenAI API on (http://[\d.]+:\d+)/v1")
_SIM_URL = re.compile(rb"(http://127\.0\.0\.1:\d+)")


async def _spawn(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vllm_control_plane.cli", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip


async def _stop(proc: asyncio.subprocess.Process) -> int:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
    return proc.returncode or 0


@pytest.fixture
async def processes() -> AsyncIterator[list[asyncio.subprocess.Process]]:
    procs: list[asyncio.subprocess.Process] = []
    yield procs
    for proc in procs:
        await _stop(proc)


async def test_vcp_serve_without_config_serves_an_embedded_fleet(processes) -> None:
    proc = await _spawn("serve", "--port", "0")
    processes.append(proc)
    url, output = await read_until(proc, _URL)
    assert b"embedded simulated fleet" in output
    assert b"llama-3-70b" in output and b"llama-3-8b" in output
    async with AsyncOpenAI(base_url=url.decode() + "/v1", api_key="x", max_retries=0) as client:
        models = {m.id for m in (await client.models.list()).data}
        assert models == {"llama-3-70b", "llama-3-8b"}
        reply = await client.chat.completions.create(model="llama-3-8b", messages=CHAT,
                                                     max_tokens=8)  # fmt: skip
        assert reply.choices[0].message.content
    assert await _stop(proc) == 0


async def test_vcp_serve_over_vcp_sim_subprocesses(processes, tmp_path: Path) -> None:
    sims = []
    for model in ("llama-3-8b", "llama-3-8b"):
        proc = await _spawn("sim", "--model", model, "--port", "0", "--time-scale", "0.05")
        processes.append(proc)
        sims.append((await read_until(proc, _SIM_URL))[0].decode())
    config = {
        "server": {"shutdown_grace_s": 5},
        "instances": [
            {"instance_id": f"vllm-{i}", "url": url, "model_name": "llama-3-8b",
             "gpu_type": "H100"}
            for i, url in enumerate(sims)
        ],
    }  # fmt: skip
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(config))
    gateway = await _spawn("serve", "--config", str(path), "--port", "0")
    processes.append(gateway)
    url, _ = await read_until(gateway, _URL)
    async with AsyncOpenAI(base_url=url.decode() + "/v1", api_key="x", max_retries=0) as client:
        replies = await asyncio.gather(*(
            client.chat.completions.with_raw_response.create(
                model="llama-3-8b", messages=CHAT, max_tokens=6)
            for _ in range(6)
        ))  # fmt: skip
        served = {r.headers["x-instance-id"] for r in replies}
        assert served <= {"vllm-0", "vllm-1"} and all(r.parse().choices for r in replies)
        stream = await client.chat.completions.create(model="llama-3-8b", messages=CHAT,
                                                      max_tokens=6, stream=True)  # fmt: skip
        assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert await _stop(gateway) == 0


async def test_vcp_serve_rejects_a_bad_config(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("instances:\n  - instance_id: a\n    prot: 8000\nscheduling_policy: magic\n")
    proc = await _spawn("serve", "--config", str(path))
    out, _ = await proc.communicate()
    assert proc.returncode == 2
    assert b"instances[0].prot: unknown key" in out
    assert b"scheduling_policy: unknown name 'magic'" in out

"""The gateway (``vcp serve --config FILE``) in front of two real vLLM servers.

The official ``openai`` client streams chat and completions through it exactly as it would from
one vLLM server: the text is the engine's (greedy decoding gives the same text as asking the
engine directly), usage comes through, and the work spreads over both servers. A client that
hangs up mid-stream cancels its request, and the abort reaches the engine.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import openai
import pytest
import yaml
from openai.types.chat import ChatCompletionChunk
from tests.vllm_support import SERVED_MODEL_NAME, VllmServer
from tests.vllm_support.fleet import (
    ENGINE_STEPS,
    EngineCounters,
    engine_idle,
    instance_id,
    wait_until,
)
from tests.vllm_support.server import free_ports

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(600)]

MESSAGES = [{"role": "user", "content": "Which server has the shortest queue?"}]
GREEDY = {"temperature": 0.0, "extra_body": {"ignore_eos": True}}


def gateway_config(servers: list[VllmServer], port: int) -> dict:
    return {
        "server": {"host": "127.0.0.1", "port": port},
        "scheduling_policy": "fifo",
        "routing_strategy": "round_robin",
        # Five strikes: a health check answered late by a busy, CPU-starved engine is no crash.
        "monitor": {"health_interval_s": 0.5, "unhealthy_threshold": 5, "healthy_threshold": 1},
        "instances": [
            {
                "instance_id": instance_id(i),
                "url": server.base_url,
                "model_name": SERVED_MODEL_NAME,
                "gpu_type": "CPU",
                "max_concurrent_requests": 4,
            }
            for i, server in enumerate(servers)
        ],
    }


@pytest.fixture(scope="module")
def gateway(
    vllm_servers: list[VllmServer], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """``vcp serve`` as its own process, as a user runs it; stopped with SIGTERM."""
    port = free_ports(1)[0]
    tmp_path = tmp_path_factory.mktemp("gateway")
    config = tmp_path / "cluster.yaml"
    config.write_text(yaml.safe_dump(gateway_config(vllm_servers, port)))
    log = (tmp_path / "gateway.log").open("wb")
    cmd = [sys.executable, "-m", "vllm_control_plane.cli", "serve", "--config", str(config)]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, proc, tmp_path / "gateway.log")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"vcp serve exited:\n{log.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(f"{url}/ready", timeout=5) as resp:
                if resp.status == 200:
                    return
        except OSError:  # refused while binding, 503 until an instance is healthy
            pass
        time.sleep(0.2)
    raise AssertionError(f"vcp serve not ready after {timeout_s} s:\n{log.read_text()[-3000:]}")


async def test_openai_client_streams_through_the_gateway(
    gateway: str, live_vllm_servers: list[VllmServer]
) -> None:
    client = openai.AsyncOpenAI(base_url=f"{gateway}/v1", api_key="unused", max_retries=0)
    direct = openai.AsyncOpenAI(
        base_url=f"{live_vllm_servers[0].base_url}/v1", api_key="unused", max_retries=0
    )
    try:
        models = await client.models.list()
        assert SERVED_MODEL_NAME in [m.id for m in models.data]
        chunks = [c async for c in await _chat_stream(client)]
        assert chunks[0].choices[0].delta.role == "assistant"
        usage = chunks[-1].usage
        assert usage is not None and usage.completion_tokens == 12 and chunks[-1].choices == []
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        # Greedy: the engine gives the same text whether asked directly or through the gateway.
        expected = await direct.chat.completions.create(
            model=SERVED_MODEL_NAME, messages=MESSAGES, max_tokens=12, **GREEDY
        )
        assert text == expected.choices[0].message.content

        completion = await client.completions.create(
            model=SERVED_MODEL_NAME, prompt="The queue is", max_tokens=6, stream=True, **GREEDY
        )
        parts = [c async for c in completion]
        assert parts[-1].choices[0].finish_reason == "length"
    finally:
        await client.close()
        await direct.close()


async def _chat_stream(client: openai.AsyncOpenAI) -> openai.AsyncStream[ChatCompletionChunk]:
    return await client.chat.completions.create(
        model=SERVED_MODEL_NAME,
        messages=MESSAGES,  # type: ignore[arg-type]
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
        **GREEDY,
    )


async def test_concurrent_streams_spread_over_both_servers(gateway: str) -> None:
    client = openai.AsyncOpenAI(base_url=f"{gateway}/v1", api_key="unused", max_retries=0)

    async def one() -> tuple[str, int]:
        raw = await client.chat.completions.with_raw_response.create(
            model=SERVED_MODEL_NAME, messages=MESSAGES, max_tokens=32, stream=True, **GREEDY
        )
        stream = raw.parse()
        frames = [c async for c in stream]
        return raw.headers["x-instance-id"], len(frames)

    try:
        served = await asyncio.gather(*(one() for _ in range(8)))
    finally:
        await client.close()
    assert {iid for iid, _ in served} == {instance_id(0), instance_id(1)}
    assert all(n > 0 for _, n in served)


# 1000 tokens after a short prompt: near the 1024-token context, EOS ignored, so the request
# cannot end early and decoding it takes seconds.
LONG_MAX_TOKENS = 1000


async def test_client_disconnect_aborts_on_the_engine(
    gateway: str, live_vllm_servers: list[VllmServer]
) -> None:
    before = [await EngineCounters.scrape(s) for s in live_vllm_servers]
    body = {
        "model": SERVED_MODEL_NAME,
        "prompt": "The queue is",
        "max_tokens": LONG_MAX_TOKENS,
        "stream": True,
        "temperature": 0.0,
        "ignore_eos": True,
    }
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{gateway}/v1/completions", json=body) as resp,
    ):
        assert resp.status == 200
        async for line in resp.content:
            if line.startswith(b"data: {"):
                break  # the first token: the engine runs the request; leaving hangs up
    for server in live_vllm_servers:
        await wait_until(lambda s=server: engine_idle(s), timeout_s=120, what="engines idle")
    after = [await EngineCounters.scrape(s) for s in live_vllm_servers]
    deltas = [a - b for a, b in zip(after, before, strict=True)]
    steps = sum(d[ENGINE_STEPS] for d in deltas)
    generated = sum(d["vllm:generation_tokens_total"] for d in deltas)
    print(f"disconnect: the engines stopped after {steps:.0f} steps, {generated:.0f} tokens")
    assert generated >= 1
    # Had the hang-up not reached the engine core, it would have run a step per token.
    assert steps < LONG_MAX_TOKENS / 2, deltas

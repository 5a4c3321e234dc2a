"""Smoke test of the real-vLLM harness: two CPU servers answer the OpenAI surface and /metrics.

Also checks the recorded wire samples (tests/vllm_support/wire_samples) against the live server by
shape: status, content type, header names, and the key order and value types of every JSON body
and SSE frame. VCP_RECORD_WIRE_SAMPLES=1 re-records them instead.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.vllm_support import SERVED_MODEL_NAME, VllmServer
from tests.vllm_support.wire import (
    WireExchange,
    body_shape,
    exchange,
    parse_message,
    sse_frames,
)

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]

SAMPLES_DIR = Path(__file__).resolve().parents[1] / "vllm_support" / "wire_samples"
# Greedy and ignore_eos: the random model then gives the same tokens, and as many, every run.
GREEDY = {"temperature": 0.0, "ignore_eos": True}
CHAT_MESSAGES = [{"role": "user", "content": "Hello, which server has the shortest queue?"}]
V1_METRICS = {
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
    "vllm:prefix_cache_queries_total",
    "vllm:prefix_cache_hits_total",
    "vllm:num_preemptions_total",
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
    "vllm:request_success_total",
    "vllm:time_to_first_token_seconds_bucket",
    "vllm:inter_token_latency_seconds_bucket",
    "vllm:e2e_request_latency_seconds_bucket",
    "vllm:request_queue_time_seconds_bucket",
}


async def _post(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> dict[str, Any]:
    async with session.post(url, json=body) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def _post_stream(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> list[str]:
    async with session.post(url, json=body | {"stream": True}) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        return sse_frames(await resp.read())


async def _metrics(session: aiohttp.ClientSession, server: VllmServer) -> dict[str, float]:
    """Sample name (plus ``{finished_reason}`` where labelled so) → value, summed over the rest."""
    async with session.get(f"{server.base_url}/metrics") as resp:
        text = await resp.text()
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            for key in (sample.name, f"{sample.name}{{{sample.labels.get('finished_reason')}}}"):
                values[key] = values.get(key, 0.0) + sample.value
    return values


async def test_health_and_models(vllm_servers: list[VllmServer]) -> None:
    async with aiohttp.ClientSession() as session:
        for server in vllm_servers:
            async with session.get(f"{server.base_url}/health") as resp:
                assert resp.status == 200
                assert await resp.read() == b""
            async with session.get(f"{server.base_url}/v1/models") as resp:
                models = await resp.json()
            assert [m["id"] for m in models["data"]] == [SERVED_MODEL_NAME]
            assert models["data"][0]["max_model_len"] == 1024


async def test_completions(vllm_servers: list[VllmServer]) -> None:
    body = {"model": SERVED_MODEL_NAME, "prompt": "The queue is", "max_tokens": 5, **GREEDY}
    async with aiohttp.ClientSession() as session:
        for server in vllm_servers:
            url = f"{server.base_url}/v1/completions"
            result = await _post(session, url, body)
            assert result["object"] == "text_completion"
            assert result["choices"][0]["finish_reason"] == "length"
            assert result["usage"]["completion_tokens"] == 5
            frames = await _post_stream(
                session, url, body | {"stream_options": {"include_usage": True}}
            )
            assert frames[-1] == "[DONE]"
            chunks = [json.loads(f) for f in frames[:-1]]
            assert chunks[-1]["choices"] == []
            assert chunks[-1]["usage"]["completion_tokens"] == 5
            # Greedy: the streamed text is the non-streamed text.
            text = "".join(c["choices"][0]["text"] for c in chunks[:-1])
            assert text == result["choices"][0]["text"]


async def test_chat_completions(vllm_servers: list[VllmServer]) -> None:
    body = {"model": SERVED_MODEL_NAME, "messages": CHAT_MESSAGES, "max_tokens": 5, **GREEDY}
    async with aiohttp.ClientSession() as session:
        for server in vllm_servers:
            url = f"{server.base_url}/v1/chat/completions"
            result = await _post(session, url, body)
            assert result["object"] == "chat.completion"
            assert result["choices"][0]["message"]["role"] == "assistant"
            assert result["usage"]["completion_tokens"] == 5
            frames = await _post_stream(session, url, body)
            chunks = [json.loads(f) for f in frames[:-1]]
            assert frames[-1] == "[DONE]"
            assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
            assert chunks[-1]["choices"][0]["finish_reason"] == "length"
            text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
            assert text == result["choices"][0]["message"]["content"]


async def test_openai_client_streams_chat(vllm_servers: list[VllmServer]) -> None:
    client = openai.AsyncOpenAI(base_url=f"{vllm_servers[0].base_url}/v1", api_key="unused")
    try:
        stream = await client.chat.completions.create(
            model=SERVED_MODEL_NAME,
            messages=CHAT_MESSAGES,  # type: ignore[arg-type]
            max_tokens=4,
            temperature=0.0,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
        chunks = [chunk async for chunk in stream]
    finally:
        await client.close()
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4


async def test_metrics_use_v1_names(vllm_servers: list[VllmServer]) -> None:
    async with aiohttp.ClientSession() as session:
        for server in vllm_servers:
            await _post(
                session,
                f"{server.base_url}/v1/completions",
                {"model": SERVED_MODEL_NAME, "prompt": "metrics", "max_tokens": 2, **GREEDY},
            )
            values = await _metrics(session, server)
            assert values.keys() >= V1_METRICS, sorted(V1_METRICS - values.keys())
            assert 0.0 <= values["vllm:kv_cache_usage_perc"] <= 1.0
            assert values["vllm:generation_tokens_total"] >= 2
            assert not any(name.startswith("vllm:gpu_") for name in values)


async def test_prefix_cache_hits_need_a_full_block(vllm_servers: list[VllmServer]) -> None:
    """CPU KV blocks hold 128 tokens: a repeated 300-token prompt hits on its 2 full blocks."""
    server = vllm_servers[1]
    prompt = list(range(100, 400))  # token ids: exact length, no tokenizer in the way
    body = {"model": SERVED_MODEL_NAME, "prompt": prompt, "max_tokens": 1, **GREEDY}
    async with aiohttp.ClientSession() as session:
        await _post(session, f"{server.base_url}/v1/completions", body)
        before = await _metrics(session, server)
        await _post(session, f"{server.base_url}/v1/completions", body)
        after = await _metrics(session, server)
    hits = after["vllm:prefix_cache_hits_total"] - before["vllm:prefix_cache_hits_total"]
    queries = after["vllm:prefix_cache_queries_total"] - before["vllm:prefix_cache_queries_total"]
    assert queries == 300
    assert hits == 256


async def test_max_num_seqs_queues_the_rest(vllm_servers: list[VllmServer]) -> None:
    """With max_num_seqs=4, eight requests run in two waves and the second wave queues.

    Checked from the server's own counters, not live gauges: on 2 cores the API server gets little
    CPU while the engine is busy, so a scrape during the run may only be answered after it.
    """
    server = vllm_servers[0]
    tokens = 256
    body = {"model": SERVED_MODEL_NAME, "prompt": "wait", "max_tokens": tokens, **GREEDY}
    async with aiohttp.ClientSession() as session:
        before = await _metrics(session, server)
        url = f"{server.base_url}/v1/completions"
        await asyncio.gather(*(_post(session, url, body) for _ in range(8)))
        after = await _metrics(session, server)

    def delta(name: str) -> float:
        return after[name] - before[name]

    # One wave of 8 would take ~tokens steps; two waves of 4 take at least twice that.
    assert delta("vllm:iteration_tokens_total_count") >= 2 * tokens - 1
    # The second wave waits about one wave's decode time: queue time ~ 4 D, decode time ~ 8 D.
    queued = delta("vllm:request_queue_time_seconds_sum")
    decoding = delta("vllm:request_decode_time_seconds_sum")
    assert queued >= 0.25 * decoding > 0, (queued, decoding)


def _sample_requests() -> list[tuple[str, str, str, bytes | dict[str, Any] | None]]:
    """(name, method, path, body) of every recorded exchange."""
    model = SERVED_MODEL_NAME
    usage = {"stream": True, "stream_options": {"include_usage": True}}
    chat = {"model": model, "messages": CHAT_MESSAGES, "max_tokens": 4, **GREEDY}
    completion = {"model": model, "prompt": "The queue is", "max_tokens": 4, **GREEDY}
    return [
        ("health", "GET", "/health", None),
        ("models", "GET", "/v1/models", None),
        ("version", "GET", "/version", None),
        ("tokenize", "POST", "/tokenize", {"model": model, "prompt": "The queue is"}),
        ("chat", "POST", "/v1/chat/completions", chat),
        ("chat_stream", "POST", "/v1/chat/completions", chat | usage),
        ("chat_stream_no_usage", "POST", "/v1/chat/completions", chat | {"stream": True}),
        ("completions", "POST", "/v1/completions", completion),
        ("completions_stream", "POST", "/v1/completions", completion | usage),
        ("completions_stream_no_usage", "POST", "/v1/completions", completion | {"stream": True}),
        (
            "completions_output_clamped_to_context",
            "POST",
            "/v1/completions",
            completion | {"prompt": list(range(5, 1015)), "max_tokens": 100},
        ),
        ("error_unknown_model", "POST", "/v1/completions", completion | {"model": "no-such"}),
        ("error_chat_unknown_model", "POST", "/v1/chat/completions", chat | {"model": "no-such"}),
        (
            "error_max_tokens_too_large",
            "POST",
            "/v1/completions",
            completion | {"max_tokens": 5_000},
        ),
        (
            "error_prompt_too_long",
            "POST",
            "/v1/completions",
            completion | {"prompt": list(range(5, 1105))},
        ),
        (
            "error_prompt_too_long_stream",
            "POST",
            "/v1/completions",
            completion | {"prompt": list(range(5, 1105))} | usage,
        ),
        (
            "error_chat_prompt_too_long",
            "POST",
            "/v1/chat/completions",
            chat | {"messages": [{"role": "user", "content": "server queue " * 600}]},
        ),
        ("error_bad_temperature", "POST", "/v1/completions", completion | {"temperature": -1}),
        ("error_missing_field", "POST", "/v1/chat/completions", {"model": model}),
        ("error_malformed_json", "POST", "/v1/completions", b'{"model": "tiny-llama", "prompt": '),
    ]


def _comparable(message: bytes) -> tuple[Any, ...]:
    """What must match between a recorded and a live exchange."""
    status, headers, body = parse_message(message)
    names = [k for k in headers if k not in {"date", "content-length"}]
    return status, headers.get("content-type"), names, body_shape(headers.get("content-type"), body)


async def test_wire_samples_match_live_server(vllm_servers: list[VllmServer]) -> None:
    server = vllm_servers[0]
    recording = os.environ.get("VCP_RECORD_WIRE_SAMPLES") == "1"
    async with aiohttp.ClientSession() as session:
        exchanges: list[WireExchange] = [
            await exchange(session, server.base_url, name, method, path, body)
            for name, method, path, body in _sample_requests()
        ]
        async with session.get(f"{server.base_url}/metrics") as resp:
            metrics_text = await resp.read()
    if recording:
        _write_samples(exchanges, metrics_text)
    for ex in exchanges:
        recorded = SAMPLES_DIR / f"{ex.name}.txt"
        assert recorded.exists(), f"{recorded} missing: run with VCP_RECORD_WIRE_SAMPLES=1"
        assert _comparable(ex.to_bytes()) == _comparable(recorded.read_bytes()), ex.name
    recorded_families = _family_names((SAMPLES_DIR / "metrics.txt").read_bytes())
    assert _family_names(metrics_text) == recorded_families


def _family_names(text: bytes) -> set[str]:
    return {f.name for f in text_string_to_metric_families(text.decode())}


def _write_samples(exchanges: list[WireExchange], metrics_text: bytes) -> None:
    SAMPLES_DIR.mkdir(exist_ok=True)
    for ex in exchanges:
        (SAMPLES_DIR / f"{ex.name}.txt").write_bytes(ex.to_bytes())
    (SAMPLES_DIR / "metrics.txt").write_bytes(metrics_text)
    index = {ex.name: ex.describe() for ex in exchanges}
    (SAMPLES_DIR / "index.json").write_text(json.dumps(index, indent=2) + "\n")

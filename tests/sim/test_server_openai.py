"""The official ``openai`` client (sync and async, streaming and not) against a SimServer."""

from __future__ import annotations

import asyncio

import openai
import pytest

from vllm_control_plane import tokenizer
from vllm_control_plane.sim.launcher import SimServer

MODEL = "llama-3-8b"
MESSAGES = [{"role": "user", "content": "Say something."}]


def _clients(srv: SimServer) -> tuple[openai.OpenAI, openai.AsyncOpenAI]:
    base = srv.url + "/v1"
    return (
        openai.OpenAI(base_url=base, api_key="x", max_retries=0),
        openai.AsyncOpenAI(base_url=base, api_key="x", max_retries=0),
    )


async def test_async_completion(sim_server: SimServer) -> None:
    _, client = _clients(sim_server)
    async with client:
        r = await client.completions.create(model=MODEL, prompt="Hello there", max_tokens=7,
                                            extra_body={"ignore_eos": True})  # fmt: skip
    assert r.id.startswith("cmpl-") and r.object == "text_completion" and r.model == MODEL
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 7
    assert r.usage.prompt_tokens == tokenizer.count_tokens("Hello there", add_bos=True)
    assert r.usage.total_tokens == r.usage.prompt_tokens + 7
    assert tokenizer.count_tokens(r.choices[0].text) == 7  # one token per generated word


async def test_async_chat_stream_with_usage(sim_server: SimServer) -> None:
    _, client = _clients(sim_server)
    async with client:
        stream = await client.chat.completions.create(
            model=MODEL,
            messages=MESSAGES,
            max_completion_tokens=12,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
        chunks = [c async for c in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].delta.content == ""
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "length" and all(f is None for f in finishes[:-1])
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert usage.completion_tokens == 12 == tokenizer.count_tokens(text)
    assert usage.prompt_tokens == tokenizer.count_chat_tokens(MESSAGES)


async def test_sync_client_chat_and_streamed_completion(sim_server: SimServer) -> None:
    client, _ = _clients(sim_server)

    def run() -> tuple[object, list[object]]:
        with client:
            chat = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5)
            stream = client.completions.create(
                model=MODEL, prompt=[1, 2, 3, 4], max_tokens=6, stream=True,
                extra_body={"ignore_eos": True},
            )  # fmt: skip
            return chat, list(stream)

    chat, chunks = await asyncio.to_thread(run)  # the server needs this loop meanwhile
    assert chat.id.startswith("chatcmpl-") and chat.object == "chat.completion"
    assert chat.choices[0].message.role == "assistant"
    assert chat.usage.completion_tokens == tokenizer.count_tokens(chat.choices[0].message.content)
    assert chat.choices[0].finish_reason in ("stop", "length")
    assert "".join(c.choices[0].text for c in chunks).count(" ") == 6
    assert chunks[-1].choices[0].finish_reason == "length"


async def test_errors_map_to_openai_exceptions(sim_server: SimServer) -> None:
    _, client = _clients(sim_server)
    async with client:
        with pytest.raises(openai.NotFoundError) as nf:
            await client.completions.create(model="gpt-4", prompt="x", max_tokens=1)
        with pytest.raises(openai.BadRequestError) as br:
            await client.completions.create(model=MODEL, prompt="x", max_tokens=10**7)
    assert "The model `gpt-4` does not exist." in str(nf.value)
    assert "maximum context length is 8192 tokens" in str(br.value)


async def test_models_list(sim_server: SimServer) -> None:
    _, client = _clients(sim_server)
    async with client:
        models = await client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert models.data[0].owned_by == "vllm"

"""Bad input gets vLLM's error envelope and status, and leaves nothing in the engine."""

from __future__ import annotations

import dataclasses

import aiohttp
import orjson
import pytest

from vllm_control_plane.sim.launcher import SimServer
from vllm_control_plane.sim.types import EngineSpec

LEN = 512  # a short context keeps the overflow prompts small


@pytest.fixture
async def small(sim_spec: EngineSpec):
    async with SimServer(dataclasses.replace(sim_spec, max_model_len=LEN), time_scale=0.02) as s:
        yield s


async def _post_raw(srv: SimServer, path: str, data: bytes) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession() as s, s.post(srv.url + path, data=data,
                                                    headers=headers) as r:  # fmt: skip
        return r.status, orjson.loads(await r.read())


async def _post(srv: SimServer, body: dict, path: str = "/v1/completions") -> tuple[int, dict]:
    return await _post_raw(srv, path, orjson.dumps(body))


def _err(body: dict) -> dict:
    assert list(body) == ["error"]
    assert list(body["error"]) == ["message", "type", "param", "code"]
    return body["error"]


CASES = [
    # (body, path, status, type, message fragment)
    ({"model": "nope", "prompt": "x"}, "/v1/completions", 404, "NotFoundError",
     "The model `nope` does not exist."),
    ({"prompt": "x", "max_tokens": -3}, "/v1/completions", 400, "BadRequestError",
     "max_tokens must be at least 1, got -3."),
    ({"prompt": "x", "max_tokens": 0}, "/v1/completions", 400, "BadRequestError",
     "max_tokens must be at least 1, got 0."),
    ({"prompt": "x", "max_tokens": 100000}, "/v1/completions", 400, "BadRequestError",
     "'max_tokens' or 'max_completion_tokens' is too large: 100000. This model's maximum "
     f"context length is {LEN} tokens and your request has 2 input tokens (100000 > {LEN} - 2)."),
    ({"prompt": [7] * 600}, "/v1/completions", 400, "BadRequestError",
     f"This model's maximum context length is {LEN} tokens. However, your request has 600 input "
     "tokens. Please reduce the length of the input messages."),
    ({"max_tokens": 3}, "/v1/completions", 400, "Bad Request", "prompt"),
    ({"prompt": "x", "n": 2}, "/v1/completions", 400, "BadRequestError", "n > 1"),
    ({"prompt": "x", "temperature": -1}, "/v1/completions", 400, "BadRequestError",
     "temperature must be non-negative, got -1.0."),
    ({"prompt": "x", "top_p": 0}, "/v1/completions", 400, "BadRequestError", "top_p"),
    ({"prompt": "x", "max_tokens": "many"}, "/v1/completions", 400, "Bad Request", "max_tokens"),
    ({"prompt": "x", "stream_options": {"include_usage": True}}, "/v1/completions", 400,
     "Bad Request", "Stream options can only be defined when `stream=True`."),
    ({"prompt": "x", "max_tokens": 4, "min_tokens": 9}, "/v1/completions", 400,
     "BadRequestError", "min_tokens must be less than or equal to max_tokens=4, got 9."),
    ({"model": "nope", "messages": [{"role": "user", "content": "x"}]}, "/v1/chat/completions",
     404, "NotFoundError", "does not exist"),
    ({"messages": []}, "/v1/chat/completions", 400, "Bad Request", "messages"),
    ({"prompt": "x"}, "/v1/chat/completions", 400, "Bad Request", "messages"),
    ({"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 10**6},
     "/v1/chat/completions", 400, "BadRequestError", "is too large: 1000000"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "path", "status", "etype", "fragment"), CASES)
async def test_bad_requests(small: SimServer, body, path, status, etype, fragment) -> None:
    got_status, got = await _post(small, body, path)
    err = _err(got)
    assert (got_status, err["code"], err["type"]) == (status, status, etype)
    assert fragment in err["message"]
    _assert_nothing_left(small)


async def test_malformed_json(small: SimServer) -> None:
    for path in ("/v1/completions", "/v1/chat/completions", "/tokenize"):
        status, body = await _post_raw(small, path, b'{"prompt": "x",')
        err = _err(body)
        assert status == 400 and err["type"] == "Bad Request" and "JSON" in err["message"]
    status, body = await _post_raw(small, "/v1/completions", b"[1, 2]")
    assert status == 400
    _assert_nothing_left(small)


def _assert_nothing_left(srv: SimServer) -> None:
    stats = srv.engine.stats()
    assert not srv.engine.has_unfinished()
    assert stats.num_requests_running == stats.num_requests_waiting == 0
    assert stats.kv_cache_usage_perc == 0.0 and sum(stats.request_success.values()) == 0
    assert srv.service.num_active == 0


async def test_engine_failure_becomes_500_and_unhealthy(sim_spec: EngineSpec) -> None:
    async with SimServer(sim_spec, time_scale=0.02) as srv:
        engine = srv.engine

        def broken_step(now: float):
            raise RuntimeError("GPU fell off the bus")

        engine.step = broken_step  # type: ignore[method-assign]
        body = {"prompt": "x", "max_tokens": 5, "stream": True}
        async with aiohttp.ClientSession() as s:
            async with s.post(srv.url + "/v1/completions", json=body) as r:
                raw = await r.read()
            assert r.status == 200 and raw.endswith(b"data: [DONE]\n\n")
            assert b'"type": "InternalServerError"' in raw and b"GPU fell off" in raw
            async with s.get(srv.url + "/health") as r:
                assert r.status == 503
            status, err = await _post(srv, {"prompt": "x"})
            assert status == 500 and _err(err)["type"] == "InternalServerError"

"""The simulator's malformed-frame fault (``malformed_sse_after_tokens``), on the wire."""

from __future__ import annotations

import aiohttp
import orjson
import pytest
from tests.reliability.faultkit import sim, wait_until

from vllm_control_plane.sim.faults import FaultConfig

BODY = {"prompt": "tell me", "max_tokens": 40, "ignore_eos": True}


async def _post(url: str, stream: bool) -> tuple[int, bytes]:
    async with (
        aiohttp.ClientSession() as s,
        s.post(url + "/v1/completions", json={**BODY, "stream": stream}) as r,
    ):
        return r.status, await r.read()


@pytest.mark.parametrize("after", [0, 2])
async def test_stream_gets_n_tokens_then_a_frame_that_is_not_json(after: int) -> None:
    async with sim(1, FaultConfig(malformed_sse_after_tokens=after)) as srv:
        status, body = await _post(srv.url, stream=True)
        assert status == 200
        frames = [f for f in body.split(b"\n\n") if f]
        assert frames[-1] == b"data: [DONE]"
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(frames[-2][6:])
        words = sum(len(orjson.loads(f[6:])["choices"][0]["text"].split()) for f in frames[:-2])
        assert words == after
        await wait_until(lambda: srv.service.num_active == 0, what="engine request released")
        assert srv.engine.stats().num_requests_running == 0


async def test_non_streamed_request_gets_a_truncated_body() -> None:
    async with sim(1, FaultConfig(malformed_sse_after_tokens=1)) as srv:
        status, body = await _post(srv.url, stream=False)
        assert status == 200
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(body)


async def test_the_fault_switches_at_run_time() -> None:
    async with sim(1) as srv:
        async with (
            aiohttp.ClientSession() as s,
            s.post(srv.url + "/admin/faults", json={"malformed_sse_after_tokens": 0}) as r,
        ):
            assert r.status == 200
            assert orjson.loads(await r.read())["malformed_sse_after_tokens"] == 0
        status, body = await _post(srv.url, stream=True)
        assert status == 200 and b'"cmpl-malformed"' in body
        srv.set_faults(malformed_sse_after_tokens=None)
        status, body = await _post(srv.url, stream=True)
        assert b"cmpl-malformed" not in body and body.endswith(b"data: [DONE]\n\n")

"""``X-Hard-Deadline``: a client asks for its ``X-SLO-Deadline-Ms`` to be enforced. Passed
before the first token: 504 in the envelope; passed mid-stream: an error frame and ``[DONE]``;
bad values: 400 naming the header."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from tests.gateway.conftest import CHAT, eventually, sim

URL = "/v1/chat/completions"


def _body(max_tokens: int, stream: bool = False) -> dict[str, Any]:
    return {"model": "llama-3-8b", "messages": CHAT, "max_tokens": max_tokens,
            "ignore_eos": True, "stream": stream}  # fmt: skip


async def test_hard_deadline_before_the_first_token_is_a_504(start_gateway, http) -> None:
    gw = await start_gateway(simulated=[sim("one", time_scale=1.0, max_concurrent_requests=1)])
    core = gw.gateway.cp.core
    async with http.post(gw.url + URL, json=_body(2000, stream=True)) as busy:
        await busy.content.readline()  # the only slot is taken: the next one waits in queue
        headers = {"X-SLO-Deadline-Ms": "100", "X-Hard-Deadline": "true", "X-Request-Id": "h1"}
        async with http.post(gw.url + URL, json=_body(4), headers=headers) as r:
            payload = await r.json()
        assert r.status == 504 and r.headers["X-Request-Id"] == "h1"
        assert payload["error"]["code"] == "deadline_exceeded"
        assert payload["error"]["type"] == "TimeoutError"
        assert "queued" in payload["error"]["message"]
    assert core.record("h1").status.value == "timeout"


async def test_hard_deadline_mid_stream_ends_with_an_error_frame(start_gateway, http) -> None:
    # slowed engine: the first tokens come well inside the deadline, the end far beyond it
    gw = await start_gateway(simulated=[sim("one", time_scale=1.0, faults={"slowdown": 4})])
    headers = {"X-SLO-Deadline-Ms": "1200", "X-Hard-Deadline": "TRUE"}
    async with http.post(gw.url + URL, json=_body(5000, stream=True), headers=headers) as r:
        assert r.status == 200
        raw = await r.read()
    frames = [f for f in raw.split(b"\n\n") if f]
    assert frames[-1] == b"data: [DONE]"
    error = orjson.loads(frames[-2][6:])["error"]
    assert error["code"] == "deadline_exceeded" and "running" in error["message"]
    assert any(b'"content"' in f for f in frames[:-2])  # tokens went out before the deadline
    engine = gw.gateway.fleet.server("one").service
    await eventually(lambda: engine.num_active == 0, what="engine request aborted")
    assert gw.gateway.cp.core.counters().timeout == 1


@pytest.mark.parametrize(
    ("value", "hard_by_default", "expected"),
    [("false", True, False), ("0", False, False), (None, True, True), (None, False, False),
     ("yes", False, True)],
)  # fmt: skip
async def test_header_overrides_the_configured_default(
    start_gateway, http, value: str | None, hard_by_default: bool, expected: bool
) -> None:
    gw = await start_gateway(limits={"hard_deadlines": hard_by_default})
    headers = {"X-SLO-Deadline-Ms": "60000", "X-Request-Id": "d1"}
    if value is not None:
        headers["X-Hard-Deadline"] = value
    async with http.post(gw.url + URL, json=_body(2), headers=headers) as r:
        assert r.status == 200
    assert gw.gateway.cp.core.record("d1").hard_deadline is expected


@pytest.mark.parametrize(
    ("headers", "fragment"),
    [({"X-Hard-Deadline": "maybe", "X-SLO-Deadline-Ms": "100"}, "true or false"),
     ({"X-Hard-Deadline": "true"}, "needs X-SLO-Deadline-Ms"),
     ({"X-Hard-Deadline": "", "X-SLO-Deadline-Ms": "100"}, "true or false")],
)  # fmt: skip
async def test_bad_hard_deadline_headers_are_400(start_gateway, http, headers, fragment) -> None:
    gw = await start_gateway()
    async with http.post(gw.url + URL, json=_body(2), headers=headers) as r:
        payload = await r.json()
    assert r.status == 400 and payload["error"]["param"] == "X-Hard-Deadline"
    assert fragment in payload["error"]["message"]
    assert gw.gateway.cp.core.counters().submitted == 0

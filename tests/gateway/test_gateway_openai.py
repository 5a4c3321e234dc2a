"""The client API through the official ``openai`` client and raw HTTP, over simulated fleets."""

from __future__ import annotations

import asyncio

import aiohttp
import openai
import pytest
from aiohttp import web
from openai import AsyncOpenAI, OpenAI
from tests.gateway.conftest import ADMIN, CHAT, eventually, sim

from vllm_control_plane.sim.launcher import SimServer
from vllm_control_plane.sim.types import EngineSpec


def _sync_client(url: str) -> OpenAI:
    return OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


def _async_client(url: str, **kw: object) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, **kw)  # type: ignore[arg-type]


async def test_openai_sync_client_chat_and_completion(start_gateway) -> None:
    gw = await start_gateway()

    def call() -> tuple[object, object]:
        with _sync_client(gw.url) as client:
            chat = client.chat.completions.create(model="llama-3-8b", messages=CHAT, max_tokens=6)
            text = client.completions.create(model="llama-3-8b", prompt="Once upon", max_tokens=4)
            return chat, text

    chat, text = await asyncio.to_thread(call)
    assert chat.choices[0].message.role == "assistant"
    assert chat.choices[0].message.content
    assert chat.usage.completion_tokens <= 6 and chat.usage.prompt_tokens > 0
    assert chat.object == "chat.completion"
    assert text.choices[0].text and text.usage.completion_tokens <= 4


async def test_openai_async_client_headers_and_metadata(start_gateway) -> None:
    gw = await start_gateway()
    async with _async_client(gw.url) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="llama-3-8b",
            messages=CHAT,
            max_tokens=5,
            extra_headers={"X-Request-Id": "req-meta-1", "X-Priority": "high",
                           "X-Session-Id": "s-1", "X-User-Id": "u-1"},
        )  # fmt: skip
    assert raw.headers["x-request-id"] == "req-meta-1"
    assert raw.headers["x-instance-id"] in {"sim-a", "sim-b"}
    assert float(raw.headers["x-queue-time-ms"]) >= 0
    assert raw.parse().choices[0].message.content
    rec = gw.gateway.cp.core.record("req-meta-1")
    assert rec.request.priority.name == "HIGH"
    assert rec.request.session_id == "s-1" and rec.request.user_id == "u-1"


async def test_openai_streaming_usage_only_when_asked(start_gateway) -> None:
    gw = await start_gateway()
    async with _async_client(gw.url) as client:
        stream = await client.chat.completions.create(
            model="llama-3-8b", messages=CHAT, max_tokens=8, stream=True,
            stream_options={"include_usage": True},
        )  # fmt: skip
        chunks = [c async for c in stream]
        assert chunks[0].choices[0].delta.role == "assistant"
        assert chunks[-1].choices == [] and chunks[-1].usage is not None
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text and chunks[-1].usage.completion_tokens <= 8

        plain = await client.chat.completions.create(
            model="llama-3-8b", messages=CHAT, max_tokens=8, stream=True
        )
        plain_chunks = [c async for c in plain]
        assert all(c.usage is None for c in plain_chunks)
        assert plain_chunks[-1].choices[0].finish_reason in ("stop", "length")

        comp = await client.completions.create(
            model="llama-3-8b", prompt="Hello", max_tokens=5, stream=True,
            stream_options={"include_usage": True},
        )  # fmt: skip
        comp_chunks = [c async for c in comp]
        assert comp_chunks[-1].usage is not None and comp_chunks[-1].usage.completion_tokens <= 5


async def test_completions_take_a_prompt_of_token_ids(start_gateway, http) -> None:
    """vLLM's /v1/completions takes token ids (or a batch of one); they reach the engine as
    they are and the control plane counts them exactly. Batches of several are a clear 400."""
    gw = await start_gateway()
    ids = list(range(100, 140))
    async with _async_client(gw.url) as client:
        text = await client.completions.create(
            model="llama-3-8b", prompt=ids, max_tokens=4, extra_headers={"X-Request-Id": "ids-1"}
        )
        stream = await client.completions.create(
            model="llama-3-8b", prompt=[ids], max_tokens=4, stream=True,
            stream_options={"include_usage": True},
        )  # fmt: skip
        chunks = [c async for c in stream]
    assert text.choices[0].text and text.usage.prompt_tokens == len(ids)
    assert gw.gateway.cp.core.record("ids-1").prompt_tokens == len(ids)
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == len(ids)
    for batch in ([[1, 2], [3, 4]], ["one", "two"]):
        status, _, payload = await _post(
            http, gw.url + "/v1/completions", {"model": "llama-3-8b", "prompt": batch}
        )
        assert status == 400 and payload["error"]["param"] == "prompt"
    status, _, payload = await _post(
        http, gw.url + "/v1/completions", {"model": "llama-3-8b", "prompt": [1, -2]}
    )
    assert status == 400 and payload["error"]["param"] == "prompt"


class _Tap:
    """A transparent HTTP proxy in front of an engine that records every response body."""

    def __init__(self, engine_url: str) -> None:
        self.engine_url = engine_url
        self.bodies: dict[str, bytes] = {}
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        async with aiohttp.ClientSession() as session, session.request(
            request.method, self.engine_url + request.path_qs, data=await request.read(),
            headers={k: v for k, v in request.headers.items() if k.lower() != "host"},
        ) as upstream:  # fmt: skip
            out = web.StreamResponse(status=upstream.status)
            out.content_type = upstream.content_type
            await out.prepare(request)
            seen = bytearray()
            async for piece in upstream.content.iter_any():
                seen += piece
                await out.write(piece)
            self.bodies[request.headers.get("X-Request-Id", "")] = bytes(seen)
            await out.write_eof()
            return out

    async def __aenter__(self) -> _Tap:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
async def test_stream_bytes_equal_what_the_engine_sent(start_gateway, http, path) -> None:
    """Frame-by-frame pass-through: the client receives exactly the engine's SSE bytes (the
    engine was asked for usage, and so was the gateway)."""
    async with SimServer(EngineSpec(model="llama-3-8b", mean_output_tokens=8.0),
                         time_scale=0.05) as engine, _Tap(engine.url) as tap:  # fmt: skip
        gw = await start_gateway(
            simulated=[], instances=[{"instance_id": "tapped", "url": tap.url,
                                      "model_name": "llama-3-8b"}],
        )  # fmt: skip
        body = {"model": "llama-3-8b", "max_tokens": 12, "stream": True,
                "stream_options": {"include_usage": True}, "temperature": 0.5}  # fmt: skip
        body.update({"messages": CHAT} if "chat" in path else {"prompt": "The quick brown fox"})
        async with http.post(gw.url + path, json=body, headers={"X-Request-Id": "tap-1"}) as r:
            assert r.status == 200
            via_gateway = await r.read()
    assert via_gateway.endswith(b"data: [DONE]\n\n")
    assert b'"usage":{' in via_gateway
    assert via_gateway == tap.bodies["tap-1"]


async def test_models_lists_every_model_of_the_fleet(start_gateway) -> None:
    gw = await start_gateway(
        simulated=[sim("small"), {"name": "big", "model": "llama-3-70b", "tp": 4,
                                  "time_scale": 0.02}]
    )  # fmt: skip
    async with _async_client(gw.url) as client:
        models = await client.models.list()
    assert sorted(m.id for m in models.data) == ["llama-3-70b", "llama-3-8b"]


async def _post(http: aiohttp.ClientSession, url: str, body: object, **kw: object):
    kwargs = {"json": body} if not isinstance(body, bytes) else {"data": body}
    async with http.post(url, **kwargs, **kw) as resp:  # type: ignore[arg-type]
        return resp.status, resp.headers.copy(), await resp.json(content_type=None)


@pytest.mark.parametrize(
    ("body", "headers", "param"),
    [
        (b"{not json", {}, None),
        (b"[1, 2]", {}, None),
        ({"model": "llama-3-8b"}, {}, "messages"),
        ({"model": "llama-3-8b", "messages": "hi"}, {}, "messages"),
        ({"model": "llama-3-8b", "messages": CHAT, "max_tokens": 0}, {}, "max_tokens"),
        ({"model": "llama-3-8b", "messages": CHAT, "max_tokens": "9"}, {}, "max_tokens"),
        ({"model": "llama-3-8b", "messages": CHAT, "n": 2}, {}, "n"),
        ({"model": "llama-3-8b", "messages": CHAT, "stream": "yes"}, {}, "stream"),
        ({"model": 7, "messages": CHAT}, {}, "model"),
        ({"model": "llama-3-8b", "messages": CHAT}, {"X-Priority": "urgent"}, "X-Priority"),
        ({"model": "llama-3-8b", "messages": CHAT}, {"X-SLO-Deadline-Ms": "-5"},
         "X-SLO-Deadline-Ms"),
        ({"model": "llama-3-8b", "messages": CHAT}, {"X-Cost-Budget": "nan"}, "X-Cost-Budget"),
        ({"model": "llama-3-8b", "messages": CHAT}, {"X-TTFT-SLO-Ms": "soon"}, "X-TTFT-SLO-Ms"),
    ],
)  # fmt: skip
async def test_bad_input_is_a_400_envelope(start_gateway, http, body, headers, param) -> None:
    gw = await start_gateway()
    status, _, payload = await _post(http, gw.url + "/v1/chat/completions", body, headers=headers)
    assert status == 400
    assert set(payload["error"]) == {"message", "type", "param", "code"}
    assert payload["error"]["param"] == param


async def test_unknown_model_404_and_oversized_body_413(start_gateway, http) -> None:
    gw = await start_gateway(server={"max_body_bytes": 2048})
    status, _, payload = await _post(http, gw.url + "/v1/chat/completions",
                                     {"model": "gpt-9", "messages": CHAT})  # fmt: skip
    assert status == 404 and payload["error"]["code"] == "model_not_found"
    big = {"model": "llama-3-8b", "messages": [{"role": "user", "content": "x" * 5000}]}
    status, _, payload = await _post(http, gw.url + "/v1/chat/completions", big)
    assert status == 413 and payload["error"]["type"] == "RequestTooLargeError"
    async with http.get(gw.url + "/v1/chat/completions") as resp:
        assert resp.status == 405 and "error" in await resp.json()


async def test_api_keys_required_when_configured(start_gateway) -> None:
    tenants = [{"name": "acme", "api_keys": ["key-acme"], "max_priority": "normal"}]
    gw = await start_gateway(tenants=tenants)
    async with _async_client(gw.url) as client:
        with pytest.raises(openai.AuthenticationError):
            await client.chat.completions.create(model="llama-3-8b", messages=CHAT)
    async with AsyncOpenAI(base_url=gw.url + "/v1", api_key="key-acme", max_retries=0) as ok:
        raw = await ok.chat.completions.with_raw_response.create(
            model="llama-3-8b", messages=CHAT, max_tokens=3,
            extra_headers={"X-Priority": "critical", "X-Request-Id": "acme-1"},
        )  # fmt: skip
        assert raw.parse().choices[0].message.content
    rec = gw.gateway.cp.core.record("acme/acme-1")  # request ids are namespaced per tenant
    assert rec.request.tenant == "acme"
    assert rec.request.priority.name == "NORMAL"  # capped at the tenant's max_priority


async def test_engine_bad_request_comes_back_as_400(start_gateway, http) -> None:
    gw = await start_gateway()
    body = {"model": "llama-3-8b", "messages": CHAT, "max_tokens": 10**7}  # over the context
    status, _, payload = await _post(http, gw.url + "/v1/chat/completions", body)
    assert status == 400, payload
    assert "error" in payload


async def test_duplicate_request_id_is_409(start_gateway, http) -> None:
    gw = await start_gateway(simulated=[sim("slow", time_scale=1.0)])
    body = {"model": "llama-3-8b", "messages": CHAT, "max_tokens": 50}
    first = asyncio.create_task(_post(http, gw.url + "/v1/chat/completions", body,
                                      headers={"X-Request-Id": "dup"}))  # fmt: skip
    await eventually(lambda: gw.gateway.in_flight == 1, what="first request in flight")
    status, headers, payload = await _post(http, gw.url + "/v1/chat/completions", body,
                                           headers={"X-Request-Id": "dup"})  # fmt: skip
    assert status == 409 and payload["error"]["code"] == "duplicate_request_id"
    assert headers["X-Request-Id"] == "dup"
    assert (await first)[0] == 200


async def test_request_id_of_a_completed_request_is_409_and_a_failed_one_may_retry(
    start_gateway, http
) -> None:
    gw = await start_gateway()
    url = gw.url + "/v1/chat/completions"
    body = {"model": "llama-3-8b", "messages": CHAT, "max_tokens": 4}
    status, _, first = await _post(http, url, body, headers={"X-Request-Id": "done-1"})
    assert status == 200
    for stream in (False, True):  # re-sent after completion: a clear 409, streamed or not
        again = {**body, "stream": stream}
        status, headers, payload = await _post(http, url, again, headers={"X-Request-Id": "done-1"})
        assert status == 409, payload
        assert payload["error"]["code"] == "duplicate_request_id"
        assert payload["error"]["param"] == "X-Request-Id" and payload["error"]["type"]
        assert "already completed" in payload["error"]["message"]
        assert headers["X-Request-Id"] == "done-1" and headers["X-Should-Retry"] == "false"
    rec = gw.gateway.cp.core.record("done-1")  # the first answer is kept, not replaced
    assert rec.status.value == "completed" and rec.completion_tokens == first["usage"][
        "completion_tokens"]  # fmt: skip
    # an id whose request did not complete (here: refused over its cost budget) may be re-sent
    tight = {"X-Request-Id": "retry-1", "X-Cost-Budget": "0.000000000001"}
    status, _, payload = await _post(http, url, body, headers=tight)
    assert status == 400 and payload["error"]["code"] == "cost_budget_exceeded"
    assert gw.gateway.cp.core.status("retry-1").value == "rejected"
    status, _, _ = await _post(http, url, body, headers={"X-Request-Id": "retry-1"})
    assert status == 200 and gw.gateway.cp.core.status("retry-1").value == "completed"


async def test_queue_full_429_sheds_lowest_priority_first(start_gateway, http) -> None:
    gw = await start_gateway(
        simulated=[sim("one", time_scale=1.0, max_concurrent_requests=1)],
        limits={"max_queued": 1},
        scheduling_policy="priority",
    )
    url = gw.url + "/v1/chat/completions"
    body = {"model": "llama-3-8b", "messages": CHAT, "max_tokens": 40, "ignore_eos": True}
    running = asyncio.create_task(_post(http, url, body))
    await eventually(lambda: gw.gateway.cp.get_status()["running_requests"] == 1)
    low = asyncio.create_task(_post(http, url, body, headers={"X-Priority": "low"}))
    await eventually(lambda: gw.gateway.cp.get_status()["pending_requests"] == 1)
    high = asyncio.create_task(_post(http, url, body, headers={"X-Priority": "high"}))
    status, headers, payload = await low
    assert status == 429 and payload["error"]["code"] == "queue_full"
    assert int(headers["Retry-After"]) >= 1
    assert (await high)[0] == 200 and (await running)[0] == 200
    # Same priority as the queued one: the newcomer is refused.
    blocker = asyncio.create_task(_post(http, url, body))
    await eventually(lambda: gw.gateway.cp.get_status()["running_requests"] == 1)
    queued = asyncio.create_task(_post(http, url, body))
    await eventually(lambda: gw.gateway.cp.get_status()["pending_requests"] == 1)
    assert (await _post(http, url, body))[0] == 429
    assert (await blocker)[0] == 200 and (await queued)[0] == 200


async def test_no_healthy_instance_503(start_gateway, http) -> None:
    gw = await start_gateway(simulated=[sim("sick", faults={"unhealthy": True})])
    await eventually(lambda: not gw.gateway.cp.get_instances()[0].is_healthy, what="unhealthy")
    status, headers, payload = await _post(
        http, gw.url + "/v1/chat/completions", {"model": "llama-3-8b", "messages": CHAT}
    )
    assert status == 503 and payload["error"]["code"] == "no_healthy_instance"
    assert "Retry-After" in headers
    async with http.get(gw.url + "/ready") as resp:
        assert resp.status == 503


async def test_deadline_passed_while_queued_504(start_gateway, http) -> None:
    gw = await start_gateway(
        simulated=[sim("one", time_scale=1.0, max_concurrent_requests=1)],
        limits={"hard_deadlines": True},
        scheduling_policy="fifo",
    )
    url = gw.url + "/v1/chat/completions"
    body = {"model": "llama-3-8b", "messages": CHAT, "max_tokens": 60, "ignore_eos": True}
    blocker = asyncio.create_task(_post(http, url, body))
    await eventually(lambda: gw.gateway.cp.get_status()["running_requests"] == 1)
    status, _, payload = await _post(http, url, body, headers={"X-SLO-Deadline-Ms": "50"})
    assert status == 504 and payload["error"]["code"] in ("deadline_exceeded",
                                                          "deadline_infeasible")  # fmt: skip
    assert (await blocker)[0] == 200


@pytest.mark.parametrize("stream", [True, False])
async def test_client_disconnect_cancels_on_the_engine(start_gateway, http, stream) -> None:
    gw = await start_gateway(simulated=[sim("one", time_scale=1.0)])
    engine = gw.gateway.fleet.server("one")
    body = {"model": "llama-3-8b", "messages": CHAT, "max_tokens": 500, "ignore_eos": True,
            "stream": stream}  # fmt: skip
    headers = {"X-Request-Id": f"gone-{stream}"}

    seen = asyncio.Event()  # the test saw the engine running it: only then hang up

    async def call() -> None:
        async with http.post(gw.url + "/v1/chat/completions", json=body, headers=headers) as r:
            if stream:
                await r.content.readline()  # the first frame arrived: the engine is generating
                await seen.wait()
                raise ConnectionAbortedError
            await r.read()

    task = asyncio.create_task(call())
    await eventually(lambda: engine.service.num_active == 1, what="engine running it")
    seen.set()
    if stream:
        with pytest.raises(ConnectionAbortedError):
            await task
    else:
        task.cancel()  # closes the connection before the answer
        with pytest.raises(asyncio.CancelledError):
            await task
    await eventually(
        lambda: gw.gateway.cp.core.status(headers["X-Request-Id"]).value == "cancelled",
        what="cancelled in the control plane",
    )
    await eventually(lambda: engine.service.num_active == 0, what="aborted on the engine")
    async with http.get(gw.url + f"/admin/requests/{headers['X-Request-Id']}",
                        headers=ADMIN) as resp:  # fmt: skip
        assert (await resp.json())["status"] == "cancelled"

"""Backend for vLLM (or any OpenAI-compatible server) over HTTP.

Every request is streamed from the engine, whatever the client asked for: the first content frame
is the first token, so TTFT and TPOT are measured here rather than guessed. The engine's SSE frames
are handed up unchanged (``TokenChunk.raw``) so the gateway can pass them through byte for byte.

Timeouts: the connect timeout is aiohttp's; the first-token clock starts when the request is
sent (it bounds the wait for the response headers too, so a server that accepts and never answers
is caught); then one watchdog timer per request is re-armed on every frame (stream idle) and, when
it fires, closes the response — which also makes vLLM abort the request, as for any client
disconnect. Every failure is reported as a :class:`Failed` event whose ``kind`` says what went
wrong (the table in docs/reliability.md maps each onto a terminal state).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families

from vllm_control_plane.backends._timeout import bounded
from vllm_control_plane.backends.base import (
    Backend,
    BackendEvent,
    Failed,
    Finished,
    LoadSample,
    Timeouts,
    TokenChunk,
)
from vllm_control_plane.types import DEFAULT_PROMPT_TOKENS, ExecutionInstance, RequestMetadata

# Scraped gauge/counter names, v1 first, legacy (pre-v1 / v0) second.
_RUNNING = ("vllm:num_requests_running",)
_WAITING = ("vllm:num_requests_waiting",)
_KV_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
_PREFIX_QUERIES = ("vllm:prefix_cache_queries", "vllm:gpu_prefix_cache_queries")
_PREFIX_HITS = ("vllm:prefix_cache_hits", "vllm:gpu_prefix_cache_hits")

# Raised when the TCP connection is not established within ``Timeouts.connect`` (aiohttp >= 3.10;
# older versions raise a generic timeout, reported as such).
_CONNECT_TIMEOUT: type[BaseException] | None = getattr(aiohttp, "ConnectionTimeoutError", None)

# Token ids below 256 exist in every byte-level BPE vocabulary, so a synthetic prompt of them has
# exactly the requested length on any engine.
_SYNTHETIC_ID_RANGE = (10, 250)


def synthetic_prompt_ids(request_id: str, num_tokens: int) -> list[int]:
    """A prompt of exactly ``num_tokens`` token ids, different per request (no false cache hits)."""
    rng = random.Random(request_id)
    lo, hi = _SYNTHETIC_ID_RANGE
    return [rng.randrange(lo, hi) for _ in range(num_tokens)]


def build_request_body(instance: ExecutionInstance, request: RequestMetadata) -> tuple[str, dict]:
    """Map a RequestMetadata onto the engine's OpenAI endpoint and JSON body (always streamed)."""
    body: dict[str, Any] = dict(request.extra_body)
    body["model"] = instance.api_model_name
    if request.messages is not None:
        path = "/v1/chat/completions"
        body["messages"] = request.messages
    else:
        path = "/v1/completions"
        if request.prompt is not None:
            body["prompt"] = request.prompt
        else:
            n = request.prompt_tokens or DEFAULT_PROMPT_TOKENS
            body["prompt"] = synthetic_prompt_ids(request.request_id, n)
    optional = {
        "max_tokens": request.max_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "stop": request.stop,
        "user": request.user_id,
    }
    for key, value in optional.items():
        if value is not None:
            body.setdefault(key, value)
    if request.ignore_eos:
        body["ignore_eos"] = True
    body["stream"] = True
    body["stream_options"] = {"include_usage": True}
    return path, body


def _error_message(payload: bytes, status: int) -> str:
    try:
        err = orjson.loads(payload).get("error", {})
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
    except (orjson.JSONDecodeError, AttributeError):
        pass
    return f"engine answered HTTP {status}: {payload[:200]!r}"


class _Watchdog:
    """Bounds the wait for the first token and every gap after it.

    The first-token clock starts when the request is sent, so it also bounds a server that
    accepts the connection and never answers (no headers at all). Once the response is open the
    watchdog closes it when no frame arrives in time, which ends the read loop."""

    def __init__(self, first: float | None, idle: float | None) -> None:
        self._first, self._idle = first, idle
        self._handle: asyncio.TimerHandle | None = None
        self._sent_at = asyncio.get_running_loop().time()
        self.fired: str | None = None
        self._response: aiohttp.ClientResponse | None = None

    @property
    def header_budget(self) -> float | None:
        """Seconds left for the response headers (the first-token budget)."""
        return self._first

    def first_token_expired(self) -> None:
        self.fired = f"first token timeout ({self._first:g} s)"

    def arm(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        if self._first is None:
            return
        spent = asyncio.get_running_loop().time() - self._sent_at
        self._rearm(max(self._first - spent, 0.0), f"first token timeout ({self._first:g} s)")

    def feed(self) -> None:
        if self._idle is not None:
            self._rearm(self._idle, f"stream idle timeout ({self._idle:g} s)")
        elif self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _rearm(self, delay: float, why: str) -> None:
        if self._handle is not None:
            self._handle.cancel()
        loop = asyncio.get_running_loop()
        self._handle = loop.call_later(delay, self._fire, why)

    def _fire(self, why: str) -> None:
        self.fired = why
        if self._response is not None:
            self._response.close()

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()


class _StreamState:
    """What one SSE stream has produced so far."""

    __slots__ = ("cached", "completion_tokens", "finish_reason", "prompt_tokens", "usage_raw")

    def __init__(self) -> None:
        self.completion_tokens = 0
        self.prompt_tokens = 0
        self.cached = 0
        self.finish_reason: str | None = None
        self.usage_raw = b""


def _parse_frame(line: bytes, state: _StreamState) -> BackendEvent | None:
    """Turn one ``data: ...`` line into an event; updates usage bookkeeping in ``state``."""
    data = line[6:].strip()
    if data == b"[DONE]":
        return None
    obj = orjson.loads(data)
    if "error" in obj:
        err = obj["error"]
        message = err.get("message", str(err)) if isinstance(err, dict) else str(err)
        return Failed(
            f"engine error mid-stream: {message}",
            retryable=state.completion_tokens == 0,
            kind="stream_error",
        )
    usage = obj.get("usage")
    choices = obj.get("choices") or []
    if usage and not choices:
        state.prompt_tokens = usage.get("prompt_tokens", 0)
        state.completion_tokens = usage.get("completion_tokens", state.completion_tokens)
        details = usage.get("prompt_tokens_details") or {}
        state.cached = details.get("cached_tokens") or 0
        state.usage_raw = line + b"\n\n"
        return None
    if not choices:
        return None
    choice = choices[0]
    delta = choice.get("delta")
    text = (delta.get("content") or "") if delta is not None else (choice.get("text") or "")
    finish = choice.get("finish_reason")
    if finish:
        state.finish_reason = finish
    if not text and not finish:
        return None  # role-only or empty frame
    n = 1 if text else 0
    state.completion_tokens += n
    return TokenChunk(text=text, num_tokens=n, raw=line + b"\n\n", finish_reason=finish)


class OpenAIHTTPBackend(Backend):
    """Talks to engines over their OpenAI-compatible HTTP API with one shared aiohttp session."""

    def __init__(self, timeouts: Timeouts | None = None) -> None:
        self.timeouts = timeouts or Timeouts()
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.timeouts.connect)
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=timeout,
                json_serialize=lambda o: orjson.dumps(o).decode(),
            )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("OpenAIHTTPBackend.start() was not called")
        return self._session

    def _headers(self, instance: ExecutionInstance, request: RequestMetadata) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "X-Request-Id": request.request_id}
        if instance.api_key:
            headers["Authorization"] = f"Bearer {instance.api_key}"
        return headers

    async def generate(
        self, instance: ExecutionInstance, request: RequestMetadata
    ) -> AsyncIterator[BackendEvent]:
        path, body = build_request_body(instance, request)
        watchdog = _Watchdog(self.timeouts.first_token, self.timeouts.idle)
        state = _StreamState()
        try:
            resp = await self._send(instance.base_url + path, body, instance, request, watchdog)
            async with resp:
                if resp.status != 200:
                    yield await self._status_failure(resp)
                    return
                watchdog.arm(resp)
                async for event in self._read_stream(resp, state, watchdog):
                    yield event
                    if isinstance(event, Failed):
                        return
        except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError, OSError) as exc:
            yield self._failure(exc, state, watchdog)
            return
        finally:
            watchdog.cancel()
        yield self._ending(state, watchdog)

    async def _send(
        self,
        url: str,
        body: dict[str, Any],
        instance: ExecutionInstance,
        request: RequestMetadata,
        watchdog: _Watchdog,
    ) -> aiohttp.ClientResponse:
        """POST and wait for the response headers, within the first-token budget."""
        sending = self.session.post(
            url, data=orjson.dumps(body), headers=self._headers(instance, request)
        )
        budget = watchdog.header_budget
        if budget is None:
            return await sending
        try:
            async with bounded(budget):
                return await sending
        except asyncio.TimeoutError as exc:
            if _CONNECT_TIMEOUT is None or not isinstance(exc, _CONNECT_TIMEOUT):
                watchdog.first_token_expired()  # our bound, not aiohttp's connect timeout
            raise

    @staticmethod
    async def _status_failure(resp: aiohttp.ClientResponse) -> Failed:
        payload = await resp.read()
        return Failed(
            _error_message(payload, resp.status),
            retryable=resp.status >= 500 or resp.status == 429,
            status=resp.status,
            kind="http_status",
        )

    @staticmethod
    def _ending(state: _StreamState, watchdog: _Watchdog) -> BackendEvent:
        """The last event of a stream that ended without an exception."""
        retryable = state.completion_tokens == 0
        if watchdog.fired:  # the watchdog closed the response: the read loop just stopped
            return Failed(watchdog.fired, retryable=retryable, kind="timeout")
        if state.finish_reason is None:
            return Failed(
                "engine closed the stream before finishing", retryable=retryable, kind="protocol"
            )
        return Finished(
            finish_reason=state.finish_reason,
            prompt_tokens=state.prompt_tokens,
            completion_tokens=state.completion_tokens,
            cached_tokens=state.cached,
            raw_usage=state.usage_raw,
        )

    async def _read_stream(
        self, resp: aiohttp.ClientResponse, state: _StreamState, watchdog: _Watchdog
    ) -> AsyncIterator[BackendEvent]:
        async for raw_line in resp.content:
            line = raw_line.rstrip(b"\r\n")
            if not line.startswith(b"data:"):
                continue
            watchdog.feed()
            try:
                event = _parse_frame(
                    line if line.startswith(b"data: ") else b"data: " + line[5:], state
                )
            except (orjson.JSONDecodeError, AttributeError, TypeError) as exc:
                yield Failed(
                    f"malformed SSE frame from engine: {exc}",
                    retryable=state.completion_tokens == 0,
                    kind="protocol",
                )
                return
            if event is not None:
                yield event

    def _failure(self, exc: BaseException, state: _StreamState, watchdog: _Watchdog) -> Failed:
        retryable = state.completion_tokens == 0
        if watchdog.fired:
            return Failed(watchdog.fired, retryable=retryable, kind="timeout")
        if _CONNECT_TIMEOUT is not None and isinstance(exc, _CONNECT_TIMEOUT):
            return Failed(f"connect timeout ({self.timeouts.connect:g} s)", retryable=True,
                          kind="connect")  # fmt: skip
        if isinstance(exc, aiohttp.ClientConnectorError | ConnectionRefusedError):
            return Failed(f"cannot connect to engine: {exc}", retryable=True, kind="connect")
        if isinstance(exc, asyncio.TimeoutError):
            return Failed("engine timed out", retryable=retryable, kind="timeout")
        return Failed(
            f"connection to engine lost: {exc or type(exc).__name__}",
            retryable=retryable,
            kind="connect",
        )

    async def check_health(self, instance: ExecutionInstance) -> bool:
        try:
            timeout = aiohttp.ClientTimeout(total=self.timeouts.health)
            async with self.session.get(instance.base_url + "/health", timeout=timeout) as resp:
                await resp.read()
                return resp.status == 200
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            return False

    async def scrape(self, instance: ExecutionInstance) -> LoadSample | None:
        try:
            timeout = aiohttp.ClientTimeout(total=self.timeouts.scrape)
            async with self.session.get(instance.base_url + "/metrics", timeout=timeout) as resp:
                if resp.status != 200:
                    return None
                text = await resp.text()
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            return None
        with contextlib.suppress(ValueError):
            return parse_load_sample(text)
        return None


def parse_load_sample(text: str) -> LoadSample:
    """Sum vLLM's gauges/counters over label sets (one engine may expose several engine labels)."""
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith(("_created", "_bucket", "_sum", "_count")):
                continue
            name = sample.name.removesuffix("_total")
            totals[name] = totals.get(name, 0.0) + float(sample.value)

    def first(names: tuple[str, ...]) -> float:
        return next((totals[n] for n in names if n in totals), 0.0)

    return LoadSample(
        num_requests_running=first(_RUNNING),
        num_requests_waiting=first(_WAITING),
        kv_cache_usage=first(_KV_USAGE),
        prefix_cache_queries=first(_PREFIX_QUERIES),
        prefix_cache_hits=first(_PREFIX_HITS),
        raw=totals,
    )

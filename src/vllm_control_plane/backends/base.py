"""The one protocol every backend speaks: start a request, yield events, report health and load.

The runtime never knows which backend it drives. A generation is an async iterator of events:
zero or more :class:`TokenChunk` then exactly one :class:`Finished` or :class:`Failed`; a chunk
may carry no output (vLLM's chat role frame, passed on as it arrives). Closing the iterator early
(``aclose()`` or cancelling the task consuming it) aborts the request on the engine — for HTTP
that is closing the stream, which vLLM treats as a client disconnect.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal

from vllm_control_plane.types import ExecutionInstance, RequestMetadata

ApiKind = Literal["chat", "completions"]


@dataclass(frozen=True, slots=True)
class TokenChunk:
    """Generated text arrived. ``raw`` is the engine's SSE frame, for byte-exact pass-through."""

    text: str
    num_tokens: int  # tokens in this chunk (1 per frame for vLLM; more when coalesced)
    raw: bytes = b""  # the whole ``data: ...\n\n`` frame as the engine sent it
    finish_reason: str | None = None  # set on the chunk that carries it

    @property
    def has_output(self) -> bool:
        """False for a frame that carries no generated output (vLLM's chat role frame): it is
        passed on for byte-exact pass-through but is not the first token."""
        return self.num_tokens > 0 or self.finish_reason is not None


@dataclass(frozen=True, slots=True)
class Finished:
    """The engine finished the request normally."""

    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    raw_usage: bytes = b""  # the engine's usage-only frame, if it sent one
    response: dict | None = None  # the full JSON body for non-streamed calls


@dataclass(frozen=True, slots=True)
class Failed:
    """The request failed. ``retryable`` is True only when no token was produced yet."""

    error: str
    retryable: bool
    status: int | None = None  # HTTP status when the engine answered with an error
    kind: str = "engine_error"  # connect | timeout | http_status | stream_error | protocol


BackendEvent = TokenChunk | Finished | Failed


@dataclass(frozen=True, slots=True)
class LoadSample:
    """Engine-side load as scraped from ``/metrics`` (vLLM v1 names, legacy accepted)."""

    num_requests_running: float = 0.0
    num_requests_waiting: float = 0.0
    kv_cache_usage: float = 0.0  # 0..1
    prefix_cache_queries: float = 0.0  # counter, tokens
    prefix_cache_hits: float = 0.0  # counter, tokens
    raw: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Per-phase timeouts in seconds (None = no limit)."""

    connect: float | None = 5.0
    first_token: float | None = 300.0
    idle: float | None = 120.0  # longest gap between stream chunks
    health: float = 2.0
    scrape: float = 2.0


class Backend(abc.ABC):
    """Executes requests on instances. One backend object serves many instances."""

    async def start(self) -> None:  # noqa: B027
        """Open pools / sessions. Idempotent."""

    async def close(self) -> None:  # noqa: B027
        """Release everything; no task or connection may remain."""

    @abc.abstractmethod
    def generate(
        self, instance: ExecutionInstance, request: RequestMetadata
    ) -> AsyncIterator[BackendEvent]:
        """Run ``request`` on ``instance``; yield chunks then one Finished or Failed."""

    @abc.abstractmethod
    async def check_health(self, instance: ExecutionInstance) -> bool:
        """True when the instance answers its health check in time."""

    @abc.abstractmethod
    async def scrape(self, instance: ExecutionInstance) -> LoadSample | None:
        """Current engine load, or None when it cannot be read."""

    def api_kind(self, request: RequestMetadata) -> ApiKind:
        return "chat" if request.messages is not None else "completions"

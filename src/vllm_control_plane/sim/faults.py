"""Fault injection for simulated servers: what can go wrong, and the seeded dice that decide when.

How it works: :class:`FaultConfig` is plain, strict data (CLI flags, fleet file entries and the
``/admin/faults`` endpoint all produce it). :class:`FaultInjector` holds the current config and a
seeded generator; the HTTP layer asks it yes/no questions at fixed points of a request's life
("fail this request?", "crash after this token?"). Switching faults at run time swaps the config
atomically; requests already streaming see the new config at their next token.

Fault semantics (the HTTP layer carries them out):

* ``error_rate`` / ``error_status`` — each inference request fails at once with that probability,
  with the status and a vLLM-style error envelope; nothing reaches the engine.
* ``hang`` — inference requests are accepted and never answered (until the client goes away).
* ``crash_after_tokens`` — once any stream has sent that many tokens, every open connection is cut
  mid-stream and their engine requests aborted; with ``crash_exit`` the process exits instead.
* ``slowdown`` — every engine step takes ``slowdown`` times longer (model time too).
* ``unhealthy`` — ``/health`` answers 503; requests are still served.
* ``midstream_error_after_tokens`` — after that many tokens a stream gets an error frame and
  ``[DONE]`` (a non-streaming request gets a 500).
* ``malformed_sse_after_tokens`` — after that many tokens a stream gets a frame that is not valid
  JSON, then ``[DONE]`` (a non-streaming request gets a 200 with a truncated JSON body).
* ``startup_delay_s`` — the port is not bound (connection refused) for that long; set at run time
  it acts as a restart: the listener and every connection close, then the port comes back.
"""

from __future__ import annotations

import random
from http import HTTPStatus
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["FaultConfig", "FaultInjector", "error_type_for_status"]


class FaultConfig(BaseModel):
    """Which faults a simulated server injects. All off by default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    error_rate: float = Field(0.0, ge=0.0, le=1.0)
    """Probability that an inference request fails immediately."""
    error_status: int = Field(500, ge=400, le=599)
    """HTTP status of injected errors."""
    hang: bool = False
    """Accept inference requests and never answer them."""
    crash_after_tokens: int | None = Field(None, ge=0)
    """Cut every open connection once a stream has sent this many tokens."""
    crash_exit: bool = False
    """With ``crash_after_tokens``: exit the process (status 1) instead of cutting connections."""
    slowdown: float = Field(1.0, gt=0.0)
    """Factor applied to every engine step's duration."""
    unhealthy: bool = False
    """Answer ``/health`` with 503."""
    midstream_error_after_tokens: int | None = Field(None, ge=0)
    """Send an error frame after this many tokens of a stream."""
    malformed_sse_after_tokens: int | None = Field(None, ge=0)
    """Send a frame that is not valid JSON after this many tokens of a stream."""
    startup_delay_s: float = Field(0.0, ge=0.0)
    """Seconds before the port is bound (at run time: a restart of that length)."""

    def updated(self, patch: dict[str, Any]) -> FaultConfig:
        """A validated copy with ``patch`` applied (unknown keys and bad values raise)."""
        return FaultConfig.model_validate({**self.model_dump(), **patch})


def error_type_for_status(status: int) -> str:
    """vLLM's error ``type`` for a status: ``BadRequestError``, ``NotFoundError``, …"""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        return "Error"
    name = "".join(w[:1].upper() + w[1:] for w in phrase.replace("-", " ").split())
    return name if name.endswith("Error") else name + "Error"


class FaultInjector:
    """The live fault config of one server plus the seeded dice for ``error_rate``."""

    def __init__(self, config: FaultConfig | None = None, seed: int = 0) -> None:
        self.config = config or FaultConfig()
        self._rng = random.Random(seed)

    def update(self, patch: dict[str, Any]) -> FaultConfig:
        """Apply a partial update; returns the new config (raises on invalid input)."""
        self.config = self.config.updated(patch)
        return self.config

    def should_fail(self) -> bool:
        """Roll the dice for one inference request."""
        rate = self.config.error_rate
        return rate > 0.0 and (rate >= 1.0 or self._rng.random() < rate)

    def crash_due(self, tokens_sent: int) -> bool:
        """True once a stream has sent ``crash_after_tokens`` tokens."""
        limit = self.config.crash_after_tokens
        return limit is not None and tokens_sent >= limit

    def malformed_due(self, tokens_sent: int) -> bool:
        """True once a stream has sent ``malformed_sse_after_tokens`` tokens."""
        limit = self.config.malformed_sse_after_tokens
        return limit is not None and tokens_sent >= limit

    def midstream_error_due(self, tokens_sent: int) -> bool:
        """True once a stream has sent ``midstream_error_after_tokens`` tokens."""
        limit = self.config.midstream_error_after_tokens
        return limit is not None and tokens_sent >= limit

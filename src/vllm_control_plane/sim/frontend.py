"""vLLM's API-server front end: the time between a request reaching the HTTP server and its
engine seeing it.

Why it is modelled: in vLLM v1 the API server (its own process) parses the request, processes
its inputs and ships it to the engine core over IPC before the engine can schedule it. vLLM stamps
a request's arrival when it enters the front end, so that time is part of its
``time_to_first_token`` (and of the client's TTFT) but not of its queue time. On the CPU build
with a tiny model it is ~2 ms per request, a third of a short prompt's TTFT; on a GPU server it
is noise next to the model's own step times, hence 0 in the GPU profiles.

The model: one server working through hand-offs in arrival order, each costing
``per_request_s + per_prompt_token_s × prompt tokens + per_active_s × requests in flight``; a
burst of arrivals queues behind it as it does behind vLLM's single front-end process. The last
term is the front end's other work: the same process detokenizes and streams every running
request's outputs, so a new request's input processing is interleaved with more of it the more
requests are in flight (measured on vLLM-CPU: ~2 ms at concurrency 1, ~4 ms at 8, ~7 ms at 32).
Pure: time is passed in.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["FrontEndModel"]


@dataclass(slots=True)
class FrontEndModel:
    """The front end's per-request cost and its queue (model seconds)."""

    per_request_s: float = 0.0
    per_prompt_token_s: float = 0.0
    per_active_s: float = 0.0
    _free_at: float = field(default=0.0, repr=False)

    def __post_init__(self) -> None:
        if min(self.per_request_s, self.per_prompt_token_s, self.per_active_s) < 0:
            raise ValueError("front-end costs must be >= 0")

    @property
    def enabled(self) -> bool:
        return self.per_request_s > 0 or self.per_prompt_token_s > 0 or self.per_active_s > 0

    def handoff_time(self, now: float, prompt_tokens: int, in_flight: int = 0) -> float:
        """When a request arriving at ``now`` reaches the engine (``in_flight``: requests the
        server is already serving); books the front end until then."""
        if not self.enabled:
            return now
        start = max(now, self._free_at)
        cost = (
            self.per_request_s
            + self.per_prompt_token_s * prompt_tokens
            + self.per_active_s * in_flight
        )
        self._free_at = start + cost
        return self._free_at

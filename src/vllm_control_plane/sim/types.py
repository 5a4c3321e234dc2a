"""The simulated engine's contract: what goes in, what comes out.

Theory of operation
-------------------
The engine is a pure state machine modelled on vLLM v1's scheduler. Nothing in it touches a
socket, an event loop or the wall clock: callers pass ``now`` (seconds, any origin) in.

* ``add_request(req, now)`` puts a request in the waiting queue (or raises
  :class:`EngineInputError` with vLLM's message when it can never run, e.g. context overflow).
* ``step(now)`` schedules one batch and returns a :class:`StepResult`: how long the step takes
  on the modelled hardware and what it produced. The outputs take effect at
  ``now + result.duration``; a driver (real-time HTTP server or virtual-time loop) waits that long
  before publishing them and calling ``step`` again. ``duration == 0`` and no outputs means the
  engine is idle.
* ``abort(request_id)`` frees the request's KV blocks at once.
* ``stats()`` is a snapshot for ``/metrics`` and for load-aware routing.

All dataclasses here are frozen and slotted: they are events, not shared mutable state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from vllm_control_plane.sim.profiles import get_gpu

FinishReason = Literal["stop", "length", "abort"]


class EngineInputError(ValueError):
    """The request can never be served (the caller did something illegal).

    ``message`` follows vLLM's wording so the HTTP layer can return it verbatim as a 400.
    """


@dataclass(frozen=True, slots=True)
class EngineSpec:
    """What engine to model: names resolve through ``sim.profiles`` (case-insensitive).

    ``None`` fields take vLLM's defaults for the GPU (DESIGN §5): H100/H200 8192 batched tokens
    and 1024 seqs, others 2048 / 256; ``max_model_len`` defaults to the model's context length.
    ``block_size`` is resolved here, at construction, from the GPU profile (16 tokens on GPUs,
    128 on vLLM's CPU backend), because the KV pool and every prompt's block hashes depend on it;
    an unknown GPU name is therefore an error already here.
    """

    model: str = "llama-3-8b"
    gpu: str = "H100"
    tp: int = 1
    pp: int = 1
    gpu_memory_utilization: float = 0.9
    block_size: int | None = None  # tokens per KV block; None: the GPU's (an int once built)
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    max_model_len: int | None = None
    enable_prefix_caching: bool = True
    num_gpu_blocks_override: int | None = None  # like vLLM's flag; mainly for tests
    jitter: float = 0.02  # relative std-dev of step-time noise (seeded)
    mean_output_tokens: float = 256.0  # mean of the natural output length when EOS is allowed
    seed: int = 0
    served_model_name: str | None = None  # name on the API; defaults to ``model``

    def __post_init__(self) -> None:
        if self.block_size is None:
            # Frozen: set once, before anyone can see the spec.
            object.__setattr__(self, "block_size", get_gpu(self.gpu).default_block_size)


@dataclass(frozen=True, slots=True)
class EngineRequest:
    """One generation request as the engine sees it.

    The engine needs lengths and prefix-block identities, not token ids: ``block_hashes`` are the
    chained hashes of the prompt's *full* blocks (see ``kv_cache.hash_blocks``), so a trace that
    only knows shared-prefix block ids can be replayed without materialising tokens.
    """

    request_id: str
    prompt_tokens: int  # number of prompt tokens (>= 1)
    max_tokens: int  # generation cap from the client (>= 1)
    block_hashes: tuple[int, ...] = ()  # chained hashes of full prompt blocks, in order
    ignore_eos: bool = False  # True: always generate exactly max_tokens (finish "length")
    min_tokens: int = 0  # never stop before this many tokens
    arrival_time: float = 0.0  # `now` at add_request; used for queue-time metrics
    output_tokens_hint: int | None = None  # replay: the trace's true output length, if known


@dataclass(frozen=True, slots=True)
class TokenOutput:
    """What one step produced for one request."""

    request_id: str
    new_tokens: int  # tokens generated this step (0 while a chunked prefill is still running)
    num_output_tokens: int  # total generated so far
    first_token: bool  # this step produced the request's first output token
    finish_reason: FinishReason | None = None  # set when the request finished this step
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache (set on first token)


@dataclass(frozen=True, slots=True)
class StepResult:
    """One engine step: its modelled duration and its outputs (effective at now + duration)."""

    duration: float  # seconds the step takes on the modelled hardware; 0.0 when idle
    outputs: tuple[TokenOutput, ...] = ()
    num_scheduled_tokens: int = 0  # prefill + decode tokens in the batch
    num_running: int = 0  # requests in the batch
    preempted: tuple[str, ...] = ()  # request ids preempted (recompute) this step


@dataclass(frozen=True, slots=True)
class EngineStats:
    """A snapshot of engine counters and gauges, named after vLLM's v1 metrics."""

    num_requests_running: int
    num_requests_waiting: int
    kv_cache_usage_perc: float  # 0..1, blocks in use by running requests / total blocks
    num_gpu_blocks: int
    prefix_cache_queries: int  # tokens looked up in the prefix cache (counter)
    prefix_cache_hits: int  # tokens found (counter)
    num_preemptions: int
    prompt_tokens: int  # prompt tokens of requests that started generating (counter, like vLLM)
    generation_tokens: int
    request_success: dict[str, int] = field(default_factory=dict)  # finished_reason -> count

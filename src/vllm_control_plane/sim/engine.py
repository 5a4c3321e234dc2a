"""The simulated vLLM engine: vLLM v1's scheduler over a modelled KV pool and step time.

How it works (one :meth:`SimEngine.step`):

1. Running requests of this beat's micro-batch are served first, in admission order: each
   needs ``num_tokens − num_computed`` tokens (1 when decoding; a prompt chunk when
   prefilling), capped by the token budget (``max_num_batched_tokens``: chunked prefill).
   When the pool cannot grow a request's blocks, the most recently admitted running request is
   preempted (recompute: blocks freed, back to the front of the waiting queue, generated tokens
   kept) until it fits or the request itself was the victim.
2. If nothing was preempted, waiting requests are admitted FCFS while ``max_num_seqs``, the
   budget and free blocks allow; the longest cached prefix chain is reused (at most
   ``num_tokens − 1`` tokens), only full blocks count.
3. A request whose every known token is computed samples one token; it finishes at its target
   length (``output_len``). The step's duration comes from the roofline model (``timing``).

Pipeline parallelism runs ``pp`` interleaved micro-batches (vLLM's virtual engines): a request
joins the micro-batch of the beat that admitted it, each beat serves one micro-batch with
per-stage cost, and a beat lasts as long as the slowest stage in flight. A request therefore
advances once per ``pp`` beats (no latency gain) while throughput and KV capacity grow.

:meth:`SimEngine.advance` is a multi-step fast path for virtual time: while every running
request is decoding and nothing can join, it runs beats in a tight loop on aggregates (no
per-request work per beat) and yields exactly what stepping one beat at a time would.

Randomness: output lengths are seeded per request (``output_len``); step-time jitter comes from
a seeded table indexed by the beat number, so results depend only on the spec and the inputs.
"""

from __future__ import annotations

import functools
from collections import deque
from dataclasses import dataclass

import numpy as np

from vllm_control_plane.sim.kv_cache import BlockTable, KVCachePool, num_gpu_blocks
from vllm_control_plane.sim.output_len import target_length
from vllm_control_plane.sim.profiles import get_gpu, get_model
from vllm_control_plane.sim.timing import StepTimeModel
from vllm_control_plane.sim.types import (
    EngineInputError,
    EngineRequest,
    EngineSpec,
    EngineStats,
    FinishReason,
    StepResult,
    TokenOutput,
)

_JITTER_TABLE_BITS = 16
_JITTER_MASK = (1 << _JITTER_TABLE_BITS) - 1
_IDLE = StepResult(duration=0.0)


@functools.lru_cache(maxsize=32)
def _jitter_table(seed: int, jitter: float) -> tuple[float, ...]:
    """Multiplicative step-time factors ``1 + jitter·N(0,1)``, floored at 0.5."""
    if jitter <= 0:
        return (1.0,) * (1 << _JITTER_TABLE_BITS)
    z = np.random.default_rng([seed, 0x7177]).standard_normal(1 << _JITTER_TABLE_BITS)
    return tuple(np.maximum(0.5, 1.0 + jitter * z).tolist())


@dataclass(frozen=True, slots=True)
class AdvanceResult:
    """What :meth:`SimEngine.advance` did: ``num_steps`` beats ending at ``end_time``.

    Only the last beat can finish requests; their outputs are in ``finished``.
    """

    num_steps: int
    end_time: float
    finished: tuple[TokenOutput, ...] = ()


_NO_ADVANCE = AdvanceResult(0, 0.0)


class _Seq:
    """Mutable per-request scheduler state (engine-private)."""

    __slots__ = (
        "cached_tokens",
        "first_done",
        "group",
        "hashes",
        "id",
        "num_computed",
        "num_output",
        "prompt",
        "reason",
        "table",
        "target",
    )

    def __init__(self, req: EngineRequest, target: int, reason: FinishReason, bs: int) -> None:
        self.id = req.request_id
        self.prompt = req.prompt_tokens
        self.hashes = req.block_hashes[: req.prompt_tokens // bs]
        self.target = target
        self.reason: FinishReason = reason
        self.num_output = 0
        self.num_computed = 0
        self.table = BlockTable()
        self.group = -1  # micro-batch while running
        self.first_done = False
        self.cached_tokens = -1  # set at first admission


class SimEngine:
    """A pure, deterministic model of one vLLM server (see the module doc)."""

    def __init__(self, spec: EngineSpec) -> None:
        model, gpu = get_model(spec.model), get_gpu(spec.gpu)
        _validate_spec(spec)
        self._spec = spec
        self._timing = StepTimeModel(model, gpu, spec.tp, spec.pp)
        self._bs = spec.block_size
        self._max_model_len = spec.max_model_len or model.context_len
        self._max_seqs = spec.max_num_seqs or gpu.default_max_num_seqs
        self._max_batched = spec.max_num_batched_tokens or gpu.default_max_num_batched_tokens
        blocks = spec.num_gpu_blocks_override or num_gpu_blocks(
            model,
            gpu,
            tp=spec.tp,
            pp=spec.pp,
            gpu_memory_utilization=spec.gpu_memory_utilization,
            block_size=spec.block_size,
        )
        _check_capacity(blocks, self._bs, self._max_model_len)
        self._pool = KVCachePool(blocks, self._bs)
        self._caching = spec.enable_prefix_caching
        self._pp = spec.pp
        self._waiting: deque[_Seq] = deque()
        self._running: list[_Seq] = []  # admission order; the tail is preempted first
        self._live: dict[str, _Seq] = {}
        self._beat = 0
        self._group_size = [0] * spec.pp
        self._group_last = [0.0] * spec.pp  # stage time of each micro-batch's last beat
        self._jitter = _jitter_table(spec.seed, spec.jitter)
        self._counters = {"queries": 0, "hits": 0, "preemptions": 0, "prompt": 0, "gen": 0}
        self._success: dict[str, int] = {}

    # -- read-only properties ----------------------------------------------------------------
    @property
    def spec(self) -> EngineSpec:
        return self._spec

    @property
    def timing(self) -> StepTimeModel:
        return self._timing

    @property
    def max_model_len(self) -> int:
        return self._max_model_len

    @property
    def num_gpu_blocks(self) -> int:
        return self._pool.num_blocks

    @property
    def block_size(self) -> int:
        return self._bs

    @property
    def max_num_seqs(self) -> int:
        return self._max_seqs

    @property
    def max_num_batched_tokens(self) -> int:
        return self._max_batched

    @property
    def served_model_name(self) -> str:
        return self._spec.served_model_name or self._spec.model

    @property
    def num_running(self) -> int:
        return len(self._running)

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    @property
    def num_steps(self) -> int:
        """Beats (non-idle steps) run so far, fast path included."""
        return self._beat

    @property
    def num_unfinished(self) -> int:
        """Running + waiting: a cheap load signal for routers (no stats snapshot)."""
        return len(self._live)

    # -- requests ----------------------------------------------------------------------------
    def add_request(self, req: EngineRequest, now: float) -> None:
        """Queue ``req`` (FCFS); raise :class:`EngineInputError` if it can never run."""
        self.validate_request(req)
        spec = self._spec
        target, reason = target_length(
            req, seed=spec.seed, mean=spec.mean_output_tokens, max_model_len=self._max_model_len
        )
        seq = _Seq(req, target, reason, self._bs)
        self._live[req.request_id] = seq
        self._waiting.append(seq)

    def validate_request(self, req: EngineRequest) -> None:
        """Raise :class:`EngineInputError` if ``req`` could never run (checked before any state
        changes, so a front end can refuse it before handing it over)."""
        if req.request_id in self._live:
            raise EngineInputError(f"Request id {req.request_id} already running.")
        if req.prompt_tokens < 1:
            raise EngineInputError("The decoder prompt cannot be empty")
        if req.max_tokens < 1:
            raise EngineInputError(f"max_tokens must be at least 1, got {req.max_tokens}.")
        if req.min_tokens < 0:
            raise EngineInputError(
                f"min_tokens must be greater than or equal to 0, got {req.min_tokens}."
            )
        if req.min_tokens > req.max_tokens:
            raise EngineInputError(
                f"min_tokens must be less than or equal to max_tokens={req.max_tokens}, "
                f"got {req.min_tokens}."
            )
        total = req.prompt_tokens + req.max_tokens
        if total > self._max_model_len:
            raise EngineInputError(
                f"This model's maximum context length is {self._max_model_len} tokens. "
                f"However, you requested {total} tokens ({req.prompt_tokens} in the messages, "
                f"{req.max_tokens} in the completion). "
                "Please reduce the length of the messages or completion."
            )

    def abort(self, request_id: str) -> bool:
        """Drop a waiting or running request and free its blocks; False if unknown."""
        seq = self._live.pop(request_id, None)
        if seq is None:
            return False
        if seq.group >= 0:
            self._running.remove(seq)
            self._leave_group(seq)
        else:
            self._waiting.remove(seq)
        self._pool.free(seq.table)
        self._success["abort"] = self._success.get("abort", 0) + 1
        return True

    def has_unfinished(self) -> bool:
        return bool(self._live)

    def stats(self) -> EngineStats:
        c = self._counters
        return EngineStats(
            num_requests_running=len(self._running),
            num_requests_waiting=len(self._waiting),
            kv_cache_usage_perc=self._pool.usage(),
            num_gpu_blocks=self._pool.num_blocks,
            prefix_cache_queries=c["queries"],
            prefix_cache_hits=c["hits"],
            num_preemptions=c["preemptions"],
            prompt_tokens=c["prompt"],
            generation_tokens=c["gen"],
            request_success=dict(self._success),
        )

    # -- one step ----------------------------------------------------------------------------
    def step(self, now: float) -> StepResult:
        """Schedule and run one beat; outputs take effect at ``now + duration``."""
        if not self._live:
            return _IDLE
        g = self._beat % self._pp
        sched: list[tuple[_Seq, int]] = []
        preempted: list[str] = []
        budget = self._schedule_running(g, self._max_batched, sched, preempted)
        if not preempted:
            self._admit_waiting(g, budget, sched)
        duration = self._beat_duration(g, sched)
        outputs = self._apply(sched)
        return StepResult(
            duration=duration,
            outputs=tuple(outputs),
            num_scheduled_tokens=sum(n for _, n in sched),
            num_running=len(sched),
            preempted=tuple(preempted),
        )

    def _schedule_running(
        self, g: int, budget: int, sched: list[tuple[_Seq, int]], preempted: list[str]
    ) -> int:
        running, pool, bs = self._running, self._pool, self._bs
        i = 0
        while i < len(running) and budget > 0:
            seq = running[i]
            i += 1
            if seq.group != g:
                continue
            n = min(seq.prompt + seq.num_output - seq.num_computed, budget)
            required = -(-(seq.num_computed + n) // bs)
            while not pool.allocate(seq.table, required):
                victim = running.pop()
                self._preempt(victim)
                preempted.append(victim.id)
                if victim is seq:
                    return budget
            self._register(seq, n)
            sched.append((seq, n))
            budget -= n
        return budget

    def _preempt(self, seq: _Seq) -> None:
        """Recompute preemption: free the blocks, keep the outputs, requeue at the front."""
        self._leave_group(seq)
        self._pool.free(seq.table)
        seq.num_computed = 0
        self._waiting.appendleft(seq)
        self._counters["preemptions"] += 1

    def _leave_group(self, seq: _Seq) -> None:
        g = seq.group
        seq.group = -1
        self._group_size[g] -= 1
        if self._group_size[g] == 0:
            self._group_last[g] = 0.0

    def _admit_waiting(self, g: int, budget: int, sched: list[tuple[_Seq, int]]) -> None:
        waiting, running, pool, bs = self._waiting, self._running, self._pool, self._bs
        while waiting and budget > 0 and len(running) < self._max_seqs:
            seq = waiting[0]
            num_tokens = seq.prompt + seq.num_output
            hits = self._prefix_hits(seq, num_tokens)
            computed = len(hits) * bs
            n = min(num_tokens - computed, budget)
            if not pool.allocate(seq.table, -(-(computed + n) // bs), hits):
                return
            waiting.popleft()
            running.append(seq)
            seq.group = g
            self._group_size[g] += 1
            seq.num_computed = computed
            if seq.cached_tokens < 0:  # like vLLM: the first admission's hit, not a recompute's
                seq.cached_tokens = computed
            if self._caching:
                self._counters["queries"] += num_tokens
                self._counters["hits"] += computed
            self._register(seq, n)
            sched.append((seq, n))
            budget -= n

    def _prefix_hits(self, seq: _Seq, num_tokens: int) -> tuple[int, ...]:
        if not self._caching or not seq.hashes:
            return ()
        k = self._pool.match_prefix(seq.hashes, (num_tokens - 1) // self._bs)
        return seq.hashes[:k]

    def _register(self, seq: _Seq, n: int) -> None:
        """Publish prompt blocks that become full with this step's tokens (vLLM caches them
        when scheduled, so a request admitted later in the same step can already hit them)."""
        if self._caching and seq.table.registered_upto < len(seq.hashes):
            self._pool.register(seq.table, (seq.num_computed + n) // self._bs, seq.hashes)

    def _beat_duration(self, g: int, sched: list[tuple[_Seq, int]]) -> float:
        new = kv = pairs = 0
        for seq, n in sched:
            c = seq.num_computed
            new += n
            kv += c
            pairs += n * c + n * (n + 1) // 2
        stage = self._timing.stage_time(new, kv, pairs, len(sched))
        last = self._group_last
        last[g] = stage
        d = max(last) if self._pp > 1 else stage
        if d <= 0.0:  # nothing schedulable: the beat still costs the fixed overhead
            d = self._timing.t0
        d *= self._jitter[self._beat & _JITTER_MASK]
        self._beat += 1
        return d

    def _apply(self, sched: list[tuple[_Seq, int]]) -> list[TokenOutput]:
        outputs: list[TokenOutput] = []
        counters = self._counters
        for seq, n in sched:
            seq.num_computed += n
            if seq.num_computed < seq.prompt + seq.num_output:
                continue  # chunked prefill still running: nothing to report
            seq.num_output += 1
            counters["gen"] += 1
            first = not seq.first_done
            if first:
                seq.first_done = True
                counters["prompt"] += seq.prompt
            reason = seq.reason if seq.num_output >= seq.target else None
            outputs.append(TokenOutput(seq.id, 1, seq.num_output, first, reason, seq.cached_tokens))
            if reason is not None:
                self._finish(seq, reason)
        return outputs

    def _finish(self, seq: _Seq, reason: str) -> None:
        del self._live[seq.id]
        self._running.remove(seq)
        self._leave_group(seq)
        self._pool.free(seq.table)
        self._success[reason] = self._success.get(reason, 0) + 1

    # -- multi-step fast path ---------------------------------------------------------------
    def advance(self, now: float, until: float) -> AdvanceResult:
        """Run decode-only beats starting at ``now`` while their start time is ``< until``.

        Only runs while nothing can change the batch: every running request decoding, no
        waiting request admissible, enough free blocks for every block boundary crossed. Stops
        after the first beat that finishes a request. Returns ``num_steps == 0`` when the fast
        path does not apply (call :meth:`step`). Equivalent to calling :meth:`step` repeatedly.
        """
        if now >= until or not self._fast_path_ok():
            return _NO_ADVANCE
        groups = self._group_aggregates()
        steps, end, used, done = self._fast_loop(now, until, groups)
        if steps == 0:
            return _NO_ADVANCE
        finished = self._fast_apply(done, used)
        return AdvanceResult(steps, end, finished)

    def _fast_path_ok(self) -> bool:
        if not self._running:
            return False
        for seq in self._running:  # decoding: one token left to compute, first token out
            if seq.num_computed != seq.prompt + seq.num_output - 1 or not seq.first_done:
                return False
        if max(self._group_size) > self._max_batched:
            return False
        return not self._waiting or self._head_blocked()

    def _head_blocked(self) -> bool:
        """True if the head of the waiting queue cannot be admitted during a decode run.

        Monotone while only decodes happen: free blocks only shrink, and a cached prefix hit
        that gets evicted costs one block either way. Not so if the budget could chunk the
        prompt (losing hits would then shrink the first chunk), nor with PP: those step."""
        if len(self._running) >= self._max_seqs:
            return True
        if self._pp > 1:
            return False
        budget = self._max_batched - len(self._running)
        if budget <= 0:
            return True
        seq = self._waiting[0]
        num_tokens = seq.prompt + seq.num_output
        if num_tokens > budget:
            return False
        hits = self._prefix_hits(seq, num_tokens)
        required = -(-num_tokens // self._bs)
        return not self._pool.fits(seq.table, required, hits)

    def _group_aggregates(self) -> list[tuple[int, int, list[int], int]]:
        """Per micro-batch: (size, Σ computed, histogram of computed % block, min steps left)."""
        bs, pp = self._bs, self._pp
        size = [0] * pp
        ctx = [0] * pp
        hist = [[0] * bs for _ in range(pp)]
        left = [1 << 62] * pp
        for seq in self._running:
            g = seq.group
            size[g] += 1
            ctx[g] += seq.num_computed
            hist[g][seq.num_computed % bs] += 1
            r = seq.target - seq.num_output
            if r < left[g]:
                left[g] = r
        return [(size[g], ctx[g], hist[g], left[g]) for g in range(pp)]

    def _fast_loop(
        self, now: float, until: float, groups: list[tuple[int, int, list[int], int]]
    ) -> tuple[int, float, int, list[int]]:
        """The tight loop: inlines ``StepTimeModel.stage_time`` and ``_beat_duration``."""
        t0, a_mem, b_mem, c_lin, c_attn, cf, cp = self._timing.decode_stage_coefficients()
        pp, bs, jit = self._pp, self._bs, self._jitter
        last = self._group_last
        done = [0] * pp
        free = self._pool.free_blocks
        beat, t, used, steps = self._beat, now, 0, 0
        while t < until:
            g = beat % pp
            b, ctx0, hist, left = groups[g]
            if b:
                j = done[g]
                need = hist[(-j) % bs]
                if used + need > free:
                    break
                kv = ctx0 + j * b
                mem = a_mem + b_mem * kv
                comp = c_lin * b + c_attn * (kv + b)
                stage = t0 + (mem if mem > comp else comp) + (cf + cp * b)
            else:
                need, stage = 0, 0.0
            last[g] = stage
            d = max(last) if pp > 1 else stage
            if d <= 0.0:
                d = t0
            t += d * jit[beat & _JITTER_MASK]
            beat += 1
            steps += 1
            if b:
                used += need
                done[g] += 1
                if done[g] == left:
                    break
        self._beat = beat
        return steps, t, used, done

    def _fast_apply(self, done: list[int], used: int) -> tuple[TokenOutput, ...]:
        """Commit the loop's beats to every request, then finish those at their target."""
        bs = self._bs
        self._pool.take_anonymous(used)
        finished: list[_Seq] = []
        gen = 0
        for seq in self._running:
            k = done[seq.group]
            if not k:
                continue
            c0 = seq.num_computed
            seq.num_computed = c0 + k
            seq.num_output += k
            seq.table.num_anon += -(-(c0 + k) // bs) - -(-c0 // bs)
            gen += k
            if seq.num_output >= seq.target:
                finished.append(seq)
        self._counters["gen"] += gen
        outputs = []
        for seq in finished:
            outputs.append(
                TokenOutput(seq.id, 1, seq.num_output, False, seq.reason, seq.cached_tokens)
            )
            self._finish(seq, seq.reason)
        return tuple(outputs)


def _validate_spec(spec: EngineSpec) -> None:
    if spec.tp < 1 or spec.pp < 1:
        raise ValueError("tp and pp must be >= 1")
    if spec.block_size < 1:
        raise ValueError("block_size must be >= 1")
    if not 0 < spec.gpu_memory_utilization <= 1:
        raise ValueError("gpu_memory_utilization must be in (0, 1]")
    for name in ("max_num_seqs", "max_num_batched_tokens", "max_model_len"):
        value = getattr(spec, name)
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1")
    if spec.num_gpu_blocks_override is not None and spec.num_gpu_blocks_override < 1:
        raise ValueError("num_gpu_blocks_override must be >= 1")
    if spec.jitter < 0 or spec.mean_output_tokens <= 0:
        raise ValueError("jitter must be >= 0 and mean_output_tokens > 0")


def _check_capacity(blocks: int, block_size: int, max_model_len: int) -> None:
    """vLLM refuses to start when one max-length request cannot fit in the KV cache."""
    if blocks < 1:
        raise ValueError(
            "No available memory for the cache blocks. Try increasing "
            "`gpu_memory_utilization` when initializing the engine."
        )
    if blocks * block_size < max_model_len:
        raise ValueError(
            f"The model's max seq len ({max_model_len}) is larger than the maximum number of "
            f"tokens that can be stored in KV cache ({blocks * block_size}). Try increasing "
            "`gpu_memory_utilization` or decreasing `max_model_len` when initializing the engine."
        )

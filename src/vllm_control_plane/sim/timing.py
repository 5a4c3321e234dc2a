"""Roofline step-time model: how long one engine step takes on the modelled hardware.

How it works: one forward pass over a batch reads every weight once plus the KV cache of the
contexts it attends to, and does ``2·params`` FLOPs per new token plus attention. Whichever of
memory and compute is slower bounds the step; a fixed overhead ``t0`` (scheduling, kernel launch,
sampling), a per-sequence overhead ``t_seq``, a prefill-step overhead ``t_prefill`` (both 0 on
GPUs; see ``GPUProfile``) and tensor-parallel all-reduces are added on top::

    t = t0 + t_seq·seqs + [t_prefill] + max(bytes / (BW·ηm), flops / (FLOPS·ηc))
        + allreduce(TP) + p2p(PP)

where ``t_prefill`` counts when some sequence computes more than one token (a prompt chunk).

Everything is per device: TP splits weights, KV heads and FLOPs over ``tp`` devices and adds
two all-reduces per layer; PP splits layers over ``pp`` stages. With PP the engine runs ``pp``
interleaved micro-batches, so :meth:`StepTimeModel.stage_time` is the time of one pipeline beat
and a request advances once every ``pp`` beats (see ``engine.py``).

:meth:`StepTimeModel.stage_time` is the hot path (called once per simulated step), so the model
is reduced to a handful of precomputed coefficients. The other methods are conveniences for the
estimator, which needs no engine.
"""

from __future__ import annotations

import math

from vllm_control_plane.sim.profiles import GPUProfile, ModelProfile, get_gpu, get_model


class StepTimeModel:
    """Step time of ``model`` on ``tp × pp`` devices of ``gpu``. Pure and immutable."""

    __slots__ = (
        "_a_mem",
        "_b_mem",
        "_c_attn",
        "_c_lin",
        "_comm_fixed",
        "_comm_per_token",
        "_t_prefill",
        "_t_seq",
        "gpu",
        "model",
        "pp",
        "t0",
        "tp",
    )

    def __init__(
        self, model: ModelProfile | str, gpu: GPUProfile | str, tp: int = 1, pp: int = 1
    ) -> None:
        if tp < 1 or pp < 1:
            raise ValueError("tp and pp must be >= 1")
        self.model = get_model(model) if isinstance(model, str) else model
        self.gpu = get_gpu(gpu) if isinstance(gpu, str) else gpu
        self.tp, self.pp = tp, pp
        self.t0 = self.gpu.t0
        self._t_seq = self.gpu.t_seq
        self._t_prefill = self.gpu.t_prefill
        self._set_coefficients()

    def _set_coefficients(self) -> None:
        m, g, tp, pp = self.model, self.gpu, self.tp, self.pp
        mem_rate = g.mem_bw * g.eta_mem
        flop_rate = g.flops * g.eta_compute * tp * pp
        self._a_mem = m.weight_bytes / (tp * pp) / mem_rate
        self._b_mem = m.kv_bytes_per_token_per_gpu(tp, pp) / mem_rate
        self._c_lin = 2.0 * m.params / flop_rate
        # QK^T and A·V: 2 FLOPs per multiply-add each, per query head, per (token, context) pair.
        self._c_attn = 4.0 * m.num_layers * m.heads * m.head_dim / flop_rate
        fixed, per_token = 0.0, 0.0
        if tp > 1:  # two ring all-reduces of the activations per layer (attention out, MLP out)
            n = 2 * math.ceil(m.num_layers / pp)
            fixed += n * g.link_latency
            per_token += n * 2.0 * (tp - 1) / tp * m.hidden * m.dtype_bytes / g.link_bw
        if pp > 1:  # one activation hand-off to the next stage per beat
            fixed += g.link_latency
            per_token += m.hidden * m.dtype_bytes / g.link_bw
        self._comm_fixed, self._comm_per_token = fixed, per_token

    def stage_time(
        self, new_tokens: int, kv_read_tokens: int, attn_pairs: int, seqs: int = 1
    ) -> float:
        """One beat: ``new_tokens`` computed for ``seqs`` sequences, ``kv_read_tokens`` of cached
        KV read, and ``attn_pairs`` (query token, context token) pairs of attention.
        0 tokens -> 0 s. More tokens than sequences means a prompt chunk is in the beat."""
        if new_tokens <= 0:
            return 0.0
        mem = self._a_mem + self._b_mem * kv_read_tokens
        comp = self._c_lin * new_tokens + self._c_attn * attn_pairs
        comm = self._comm_fixed + self._comm_per_token * new_tokens
        fixed = self.t0 + self._t_seq * seqs
        if new_tokens > seqs:
            fixed += self._t_prefill
        return fixed + (mem if mem > comp else comp) + comm

    def decode_stage_coefficients(self) -> tuple[float, float, float, float, float, float, float]:
        """``(t0, a_mem, b_mem, c_lin, c_attn, comm_fixed, per_token)`` for tight loops
        that inline :meth:`stage_time` (the engine's multi-step fast path). In a decode-only beat
        every sequence computes exactly one token, so the per-sequence overhead is folded into
        ``per_token`` (the all-reduce cost per token plus ``t_seq``)."""
        return (
            self.t0,
            self._a_mem,
            self._b_mem,
            self._c_lin,
            self._c_attn,
            self._comm_fixed,
            self._comm_per_token + self._t_seq,
        )

    def step_time(
        self,
        prefill_tokens: int,
        decode_contexts: int,
        decode_tokens_in_context: int,
        *,
        prefill_seqs: int = 1,
    ) -> float:
        """Time for the whole engine to advance every scheduled request once.

        ``decode_contexts`` requests decode one token each over ``decode_tokens_in_context``
        context tokens in total; ``prefill_tokens`` fresh prompt tokens (split evenly over
        ``prefill_seqs`` prompts) are computed alongside. With PP the load is split over ``pp``
        micro-batches that each take one beat, so this is a request's inter-token time.
        """
        pp = self.pp
        per_seq = prefill_tokens / max(1, prefill_seqs)
        pairs = prefill_tokens * (per_seq + 1) / 2 + decode_tokens_in_context + decode_contexts
        tokens = prefill_tokens + decode_contexts
        if tokens <= 0:
            return 0.0
        seqs = decode_contexts + (prefill_seqs if prefill_tokens > 0 else 0)
        return pp * self.stage_time(
            math.ceil(tokens / pp),
            math.ceil(decode_tokens_in_context / pp),
            math.ceil(pairs / pp),
            math.ceil(seqs / pp),
        )

    def prefill_time(self, tokens: int, *, chunk: int | None = None) -> float:
        """Prefill of one ``tokens``-long prompt alone; ``chunk`` = chunked-prefill budget."""
        if tokens <= 0:
            return 0.0
        chunk = chunk or tokens
        total, done = 0.0, 0
        while done < tokens:
            n = min(chunk, tokens - done)
            pairs = n * done + n * (n + 1) // 2
            total += self.pp * self.stage_time(n, done, pairs)
            done += n
        return total

    def decode_time(self, batch: int, avg_context: float) -> float:
        """Inter-token time of ``batch`` requests decoding with ``avg_context`` tokens each."""
        return self.step_time(0, batch, round(batch * avg_context))

    def decode_throughput(self, batch: int, avg_context: float) -> float:
        """Generated tokens per second at steady state."""
        t = self.decode_time(batch, avg_context)
        return batch / t if t > 0 else 0.0

    def __repr__(self) -> str:
        return f"StepTimeModel({self.model.name!r}, {self.gpu.name!r}, tp={self.tp}, pp={self.pp})"

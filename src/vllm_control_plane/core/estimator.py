"""Predicted TTFT, TPOT, latency and cost of a request on an instance, calibrated online.

How it works:

* **Prior** — the simulator's roofline :class:`~vllm_control_plane.sim.timing.StepTimeModel`
  for the instance's model, GPU, TP and PP. The request joins a batch of
  ``b = max(active, scraped running) + 1`` decoding requests of ``prompt + output/2`` context;
  ``TPOT = step_time(decode b)``. ``TTFT`` is its own prefill step (chunked at the GPU's default
  ``max_num_batched_tokens``, with the running decodes alongside) plus one such step for every
  request already waiting in the engine's queue (vLLM admits FCFS, and they have prompts too).
* **Calibration** — per instance, a geometric EWMA of observed / predicted, one for TTFT and one
  for TPOT, fed by the core on first token and on completion; predictions are multiplied by it.
  It absorbs everything the prior leaves out (real kernels, other tenants, network).
* **Cost** — ``latency × price/h × gpu_count / 3600 / b``: the request's share of the instance
  while it runs with ``b`` requests, the same formula :mod:`.cost` charges after the fact.
* **Profiles** — ``gpu_type`` and ``model_name`` resolve through :mod:`sim.profiles`. Fallbacks
  (documented in docs/concepts.md): an unknown or missing GPU is the known GPU whose memory is
  nearest ``gpu_memory_gb``; an unknown model becomes a Llama-shaped profile whose parameter
  count is read from its name ("mistral-7b" → 7e9, "8x7b" → 56e9), else an 8B model.

Raw step times are memoised on ``(profile, batch, waiting, prompt bucket, output bucket)`` with
buckets ~19 % wide, so a dispatch that compares 64 instances costs dictionary look-ups.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from vllm_control_plane.core.cost import hourly_rate
from vllm_control_plane.core.interfaces import Prediction
from vllm_control_plane.sim.profiles import GPUProfile, ModelProfile, get_gpu, get_model
from vllm_control_plane.sim.timing import StepTimeModel
from vllm_control_plane.types import ExecutionInstance

_MEMORY_ANCHORS = ("L4", "A100-40G", "H100", "H200")  # nearest-memory fallback candidates
_DEFAULT_PARAMS = 8e9  # the most commonly served size when a name says nothing
_PARAMS_RE = re.compile(r"(?:(\d+)x)?(\d+(?:\.\d+)?)\s*([bm])(?![a-z])", re.IGNORECASE)
_RATIO_BOUNDS = (0.05, 20.0)
_CACHE_LIMIT = 200_000


def resolve_gpu(instance: ExecutionInstance) -> GPUProfile:
    """The instance's GPU profile: its ``gpu_type`` if known, else the nearest by memory."""
    if instance.gpu_type:
        try:
            return get_gpu(instance.gpu_type)
        except ValueError:
            pass
    anchors = [get_gpu(name) for name in _MEMORY_ANCHORS]
    gib = instance.gpu_memory_gb * 1024**3
    return min(anchors, key=lambda g: abs(g.mem_bytes - gib))


def resolve_model(name: str) -> ModelProfile:
    """A known model's profile, or a Llama-shaped guess sized from the name."""
    try:
        return get_model(name)
    except ValueError:
        return _guess_model(name)


def params_from_name(name: str) -> float | None:
    """'llama-2-13b' → 13e9, 'mixtral-8x7b' → 56e9, 'opt-350m' → 3.5e8; None if no size."""
    matches = list(_PARAMS_RE.finditer(name))
    if not matches:
        return None
    match = matches[-1]  # the last size in the name is the model's (e.g. "qwen2.5-coder-32b")
    experts = int(match.group(1) or 1)
    scale = 1e9 if match.group(3).lower() == "b" else 1e6
    return experts * float(match.group(2)) * scale


def _guess_model(name: str) -> ModelProfile:
    params = params_from_name(name) or _DEFAULT_PARAMS
    # Llama-family proportions: 8B has 32 layers of width 4096, 70B 80 of 8192.
    layers = max(2, min(128, round(32 * (params / 8e9) ** 0.4)))
    hidden = max(256, 128 * round(math.sqrt(params / (12 * layers)) / 128))
    return ModelProfile(
        name=f"guess:{name}",
        params=params,
        num_layers=layers,
        num_kv_heads=8,
        head_dim=128,
        num_heads=max(1, hidden // 128),
        hidden_size=hidden,
    )


@dataclass(slots=True)
class _Perf:
    """One (model, GPU, TP, PP) deployment's step-time model and engine defaults."""

    model: StepTimeModel
    key: tuple[str, str, int, int]
    chunk: int  # max_num_batched_tokens
    max_seqs: int
    usd_per_hour: float


@dataclass(slots=True)
class _Calibration:
    ttft: float = 1.0
    tpot: float = 1.0
    samples: int = 0


def _bucket(x: int) -> int:
    """~19 %-wide logarithmic buckets (4 per doubling); exact below 8."""
    return x if x < 8 else 8 + int(4 * math.log2(x / 8))


def _unbucket(b: int) -> int:
    return b if b < 8 else round(8 * 2 ** ((b - 8 + 0.5) / 4))


class RooflineEstimator:
    """The default :class:`~vllm_control_plane.core.interfaces.Estimator`."""

    def __init__(self, *, alpha: float = 0.2) -> None:
        if not 0 < alpha <= 1:
            raise ValueError("alpha must be in (0, 1]")
        self.alpha = alpha
        self._perf: dict[tuple[object, ...], _Perf] = {}
        self._calib: dict[str, _Calibration] = {}
        self._raw: dict[tuple[object, ...], tuple[float, float]] = {}

    # -- prediction ---------------------------------------------------------------------------
    def predict(
        self, instance: ExecutionInstance, prompt_tokens: int, output_tokens: int
    ) -> Prediction:
        perf = self._perf_of(instance)
        batch = min(max(instance.active_requests, instance.num_requests_running) + 1, perf.max_seqs)
        waiting = instance.num_requests_waiting
        ttft_s, tpot_s = self._raw_times(perf, batch, waiting, prompt_tokens, output_tokens)
        calib = self._calib.get(instance.instance_id)
        if calib is not None:
            ttft_s, tpot_s = ttft_s * calib.ttft, tpot_s * calib.tpot
        latency_s = ttft_s + tpot_s * max(0, output_tokens - 1)
        cost = latency_s * perf.usd_per_hour / 3600.0 / batch
        return Prediction(ttft_s * 1e3, tpot_s * 1e3, latency_s * 1e3, cost)

    def _raw_times(
        self, perf: _Perf, batch: int, waiting: int, prompt: int, output: int
    ) -> tuple[float, float]:
        key = (perf.key, batch, waiting, _bucket(prompt), _bucket(output))
        hit = self._raw.get(key)
        if hit is None:
            if len(self._raw) >= _CACHE_LIMIT:
                self._raw.clear()
            hit = self._compute(perf, batch, waiting, _unbucket(key[3]), _unbucket(key[4]))
            self._raw[key] = hit
        return hit

    @staticmethod
    def _compute(
        perf: _Perf, batch: int, waiting: int, prompt: int, output: int
    ) -> tuple[float, float]:
        model = perf.model
        context = prompt + output / 2
        others = batch - 1
        tpot = model.decode_time(batch, context)
        chunks = math.ceil(prompt / perf.chunk)
        step = model.step_time(min(prompt, perf.chunk), others, round(others * context))
        ttft = chunks * step * (1 + waiting)
        return ttft, tpot

    def _perf_of(self, instance: ExecutionInstance) -> _Perf:
        key = (
            instance.model_name,
            instance.gpu_type,
            instance.gpu_memory_gb,
            instance.tensor_parallel_size,
            instance.pipeline_parallel_size,
            instance.cost_per_gpu_hour,
            instance.gpu_count,
        )
        perf = self._perf.get(key)
        if perf is None:
            perf = self._perf[key] = self._build(instance)
        return perf

    @staticmethod
    def _build(instance: ExecutionInstance) -> _Perf:
        gpu = resolve_gpu(instance)
        model = resolve_model(instance.model_name)
        tp, pp = instance.tensor_parallel_size, instance.pipeline_parallel_size
        return _Perf(
            model=StepTimeModel(model, gpu, tp, pp),
            key=(model.name, gpu.name, tp, pp),
            chunk=gpu.default_max_num_batched_tokens,
            max_seqs=gpu.default_max_num_seqs,
            usd_per_hour=hourly_rate(instance, gpu.name),
        )

    # -- calibration --------------------------------------------------------------------------
    def observe(
        self,
        instance_id: str,
        predicted: Prediction,
        *,
        ttft_ms: float | None = None,
        tpot_ms: float | None = None,
    ) -> None:
        """Fold an observed TTFT and/or TPOT into the instance's calibration ratios."""
        calib = self._calib.setdefault(instance_id, _Calibration())
        if ttft_ms is not None and predicted.ttft_ms > 0 and ttft_ms > 0:
            calib.ttft = self._update(calib.ttft, ttft_ms / predicted.ttft_ms)
        if tpot_ms is not None and predicted.tpot_ms > 0 and tpot_ms > 0:
            calib.tpot = self._update(calib.tpot, tpot_ms / predicted.tpot_ms)
        calib.samples += 1

    def _update(self, ratio: float, observed_over_predicted: float) -> float:
        # Geometric EWMA on the calibrated prediction: the fixed point is observed / raw prior.
        new = ratio * observed_over_predicted**self.alpha
        return min(max(new, _RATIO_BOUNDS[0]), _RATIO_BOUNDS[1])

    def calibration(self, instance_id: str) -> tuple[float, float]:
        """(TTFT ratio, TPOT ratio) for an instance; (1, 1) before any observation."""
        calib = self._calib.get(instance_id)
        return (1.0, 1.0) if calib is None else (calib.ttft, calib.tpot)

    def forget(self, instance_id: str) -> None:
        self._calib.pop(instance_id, None)

    def describe(self, instance: ExecutionInstance) -> dict[str, object]:
        """Which profiles and price the estimate of ``instance`` rests on (for status pages)."""
        perf = self._perf_of(instance)
        ttft, tpot = self.calibration(instance.instance_id)
        return {
            "model_profile": perf.key[0],
            "gpu_profile": perf.key[1],
            "usd_per_hour": perf.usd_per_hour,
            "ttft_calibration": ttft,
            "tpot_calibration": tpot,
        }

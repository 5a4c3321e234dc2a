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
buckets at most 25 % wide, and final predictions on ``(instance, batch, waiting, prompt,
output)`` while the instance's calibration is unchanged — on ``(deployment, ...)`` before its
first calibration, so uncalibrated instances of one deployment (same profiles, TP, PP and
price) under the same load share entries — and a dispatch that compares 64 instances costs
dictionary look-ups.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
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
    ident: int = 0  # equal for deployments whose predictions are equal (see _register)

    @property
    def usd_per_s(self) -> float:
        return self.usd_per_hour / 3600.0


@dataclass(slots=True)
class _Calibration:
    ttft: float = 1.0
    tpot: float = 1.0
    samples: int = 0


def _bucket(x: int) -> int:
    """Logarithmic buckets, 4 per doubling (≤ 25 % wide), exact below 8: the exponent and the
    two bits after the leading one."""
    if x < 8:
        return x
    e = x.bit_length() - 1
    return 4 * e + ((x >> (e - 2)) & 3)


def _unbucket(b: int) -> int:
    """A representative value (the middle) of bucket ``b``."""
    if b < 8:
        return b
    e, frac = divmod(b, 4)
    low = (4 + frac) << (e - 2)
    return low + (1 << (e - 2)) // 2


class RooflineEstimator:
    """The default :class:`~vllm_control_plane.core.interfaces.Estimator`."""

    # A prediction is a function of the token counts, the instance object's fields and the
    # calibration, which changes only in observe/forget (each bumps ``calibration_epoch``):
    # the core may reuse a prediction until the instance changes (core/predictions.py).
    predictions_follow_instance_state = True

    def __init__(self, *, alpha: float = 0.2) -> None:
        if not 0 < alpha <= 1:
            raise ValueError("alpha must be in (0, 1]")
        self.alpha = alpha
        self.calibration_epoch = 0  # bumped by every observe / forget
        self._perf_by_id: dict[str, tuple[ExecutionInstance, _Perf]] = {}
        self._calib: dict[str, _Calibration] = {}
        self._raw: dict[tuple[object, ...], tuple[float, float]] = {}
        self._buckets: dict[tuple[int, int], tuple[int, int]] = {}  # (prompt, output) → buckets
        # One _Perf per distinct deployment (profile key and price), so instances of the same
        # deployment share the memo below.
        self._perfs: dict[tuple[object, ...], _Perf] = {}
        # Final predictions of uncalibrated instances by (deployment, batch, waiting, prompt,
        # output): identical instances under the same load share entries.
        self._shared: dict[tuple[int, int, int, int, int], Prediction] = {}
        # Of calibrated ones by (instance, batch, waiting, prompt, output), valid while the
        # instance's calibration (sample count) and profile are unchanged; an update replaces
        # the entry, so calibration churn does not grow this table.
        self._memo: dict[tuple[object, ...], tuple[int, _Perf, Prediction]] = {}

    # -- prediction ---------------------------------------------------------------------------
    def predict(
        self, instance: ExecutionInstance, prompt_tokens: int, output_tokens: int
    ) -> Prediction:
        iid = instance.instance_id
        entry = self._perf_by_id.get(iid)
        perf = entry[1] if entry is not None and entry[0] is instance else self._register(instance)
        batch = max(instance.active_requests, instance.num_requests_running) + 1
        if batch > perf.max_seqs:
            batch = perf.max_seqs
        waiting = instance.num_requests_waiting
        calib = self._calib.get(iid)
        if calib is None:  # uncalibrated: shared by every instance of the deployment
            shared_key = (perf.ident, batch, waiting, prompt_tokens, output_tokens)
            pred = self._shared.get(shared_key)
            if pred is None:
                pred = self._predict(None, perf, batch, waiting, prompt_tokens, output_tokens)
                if len(self._shared) >= _CACHE_LIMIT:
                    self._shared.clear()
                self._shared[shared_key] = pred
            return pred
        key = (iid, batch, waiting, prompt_tokens, output_tokens)
        hit = self._memo.get(key)
        if hit is not None and hit[0] == calib.samples and hit[1] is perf:
            return hit[2]
        pred = self._predict(calib, perf, batch, waiting, prompt_tokens, output_tokens)
        if len(self._memo) >= _CACHE_LIMIT:
            self._memo.clear()
        self._memo[key] = (calib.samples, perf, pred)
        return pred

    def predict_floor(
        self, instance: ExecutionInstance, prompt_tokens: int, output_tokens: int
    ) -> Prediction:
        """The prediction on an idle instance (batch 1, empty engine queue): a lower bound
        that does not move with load, for stable queue keys and hopeless-request tests."""
        calib = self._calib.get(instance.instance_id)
        return self._predict(calib, self._perf_of(instance), 1, 0, prompt_tokens, output_tokens)

    def predict_many(
        self, instances: Sequence[ExecutionInstance], prompt_tokens: int, output_tokens: int
    ) -> dict[str, Prediction]:
        """:meth:`predict` for several instances (what policies and routers compare)."""
        predict = self.predict
        return {i.instance_id: predict(i, prompt_tokens, output_tokens) for i in instances}

    def _predict(
        self,
        calib: _Calibration | None,
        perf: _Perf,
        batch: int,
        waiting: int,
        prompt: int,
        output: int,
    ) -> Prediction:
        buckets = self._buckets.get((prompt, output))
        if buckets is None:
            buckets = self._bucket_pair(prompt, output)
        key = (perf.key, batch, waiting, *buckets)
        raw = self._raw.get(key)
        if raw is None:
            raw = self._raw_times(key, perf)
        ttft_s, tpot_s = raw
        if calib is not None:
            ttft_s, tpot_s = ttft_s * calib.ttft, tpot_s * calib.tpot
        latency_s = ttft_s + tpot_s * (output - 1 if output > 1 else 0)
        cost = latency_s * perf.usd_per_s / batch
        return Prediction(ttft_s * 1e3, tpot_s * 1e3, latency_s * 1e3, cost)

    def _bucket_pair(self, prompt: int, output: int) -> tuple[int, int]:
        if len(self._buckets) >= _CACHE_LIMIT:
            self._buckets.clear()
        pair = self._buckets[(prompt, output)] = (_bucket(prompt), _bucket(output))
        return pair

    def _raw_times(self, key: tuple[object, ...], perf: _Perf) -> tuple[float, float]:
        if len(self._raw) >= _CACHE_LIMIT:
            self._raw.clear()
        _, batch, waiting, pb, ob = key
        raw = self._compute(perf, batch, waiting, _unbucket(pb), _unbucket(ob))  # type: ignore[arg-type]
        self._raw[key] = raw
        return raw

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
        # Static fields are read once per instance object (a re-registered instance is a new
        # object); the hot path is one dict look-up and an identity check.
        entry = self._perf_by_id.get(instance.instance_id)
        if entry is not None and entry[0] is instance:
            return entry[1]
        return self._register(instance)

    def _register(self, instance: ExecutionInstance) -> _Perf:
        built = self._build(instance)
        # The step-time model follows from the key (model and GPU profiles, TP, PP), and the
        # price is the only other input: equal pairs predict alike.
        perf = self._perfs.setdefault((built.key, built.usd_per_hour), built)
        if perf is built:
            perf.ident = len(self._perfs)
        self._perf_by_id[instance.instance_id] = (instance, perf)
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
        self.calibration_epoch += 1
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
        self.calibration_epoch += 1
        self._calib.pop(instance_id, None)
        self._perf_by_id.pop(instance_id, None)

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

"""Benchmark workloads: synthetic traffic, multi-turn chat and trace replay, all rate-scalable.

How it works: a workload is an endless (or trace-long) stream of :class:`BenchRequest` in
arrival order, generated once from a seeded generator and cached. ``requests(duration, m)``
returns the requests that arrive within ``duration`` seconds when the whole timeline is
compressed ``m`` times (arrival / m): the same requests in the same order at every rate, so a
goodput search compares like with like (common random numbers) and a higher ``m`` simply means
more of the stream fits in the window.

* :class:`SyntheticWorkload` — Poisson or gamma arrivals (``cv`` > 1 is bursty), log-normal
  prompt and output lengths, a mix of :class:`RequestClass` (priority, SLOs, tenant, share), and
  optionally shared system prompts with Zipf popularity.
* :class:`ChatWorkload` — multi-turn conversations: sessions arrive as a Poisson process; each
  opens with one of a few shared system prompts and every turn re-sends the whole history
  (system prompt, earlier questions and answers) plus a new question, after a think time. Turns
  are scheduled open-loop (arrival = previous turn's arrival + think time), so every
  configuration sees the same requests; think times are long next to response times.
* :class:`TraceWorkload` — Azure CSV or Mooncake JSONL replay (any file in those formats):
  ``speedup`` scales time, ``sample`` thins requests (seeded) to scale the rate without changing
  the trace's burstiness, prompts are clipped to the model's context less ``reserve_tokens``
  (a live server adds a BOS token to a text prompt, so prompt + output clipped to exactly
  ``max_model_len`` would be refused), and Mooncake's 512-token ``hash_ids`` become shared
  segments.

A request carries what a client would send — priority, SLOs, ``max_tokens`` cap, session, tenant
— plus the length the model *will* generate (``output_tokens``), which only the simulated
engine sees; the control plane estimates it like it would live.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from vllm_control_plane.bench.prompts import Segment, clip, prompt_tokens, segment_key
from vllm_control_plane.bench.traces import MOONCAKE_TOKENS_PER_BLOCK, TraceFormat, load_trace
from vllm_control_plane.types import RequestPriority

# Segment-key namespaces, so different kinds of content never collide.
_NS_UNIQUE, _NS_SYSTEM, _NS_USER, _NS_ANSWER, _NS_MOONCAKE = 1, 2, 3, 4, 5


@dataclass(frozen=True, slots=True)
class LengthDist:
    """Log-normal token counts with this mean and coefficient of variation, clipped."""

    mean: float
    cv: float = 0.0
    low: int = 1
    high: int = 1 << 20

    def draw(self, rng: random.Random) -> int:
        if self.cv <= 0:
            value = self.mean
        else:
            sigma2 = math.log1p(self.cv**2)
            value = rng.lognormvariate(math.log(self.mean) - sigma2 / 2, math.sqrt(sigma2))
        return int(min(self.high, max(self.low, round(value))))


@dataclass(frozen=True, slots=True)
class RequestClass:
    """One kind of traffic: who sends it, how urgent it is and what it expects."""

    name: str
    share: float = 1.0  # relative weight in the mix
    priority: RequestPriority = RequestPriority.NORMAL
    ttft_slo_ms: float | None = None
    tpot_slo_ms: float | None = None
    e2e_slo_ms: float | None = None  # end-to-end deadline (RequestMetadata.slo_deadline_ms)
    tenant: str | None = None
    max_tokens: int | None = None  # the client's cap; None: not set (the engine's limit)
    prompt: LengthDist | None = None  # synthetic workloads: this class's lengths, if its own
    output: LengthDist | None = None

    @property
    def has_slo(self) -> bool:
        return any(v is not None for v in (self.ttft_slo_ms, self.tpot_slo_ms, self.e2e_slo_ms))

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "share": self.share,
            "priority": self.priority.name.lower(),
            "ttft_slo_ms": self.ttft_slo_ms,
            "tpot_slo_ms": self.tpot_slo_ms,
            "e2e_slo_ms": self.e2e_slo_ms,
            "tenant": self.tenant,
            "max_tokens": self.max_tokens,
            "prompt_mean": self.prompt.mean if self.prompt else None,
            "output_mean": self.output.mean if self.output else None,
        }


DEFAULT_CLASS = RequestClass("default")


@dataclass(frozen=True, slots=True)
class BenchRequest:
    """One request of a workload (times in seconds, at rate multiplier 1 until scaled)."""

    request_id: str
    arrival: float
    segments: tuple[Segment, ...]
    output_tokens: int  # what the model generates (engine-side truth, >= 1)
    cls: RequestClass = DEFAULT_CLASS
    session_id: str | None = None

    @property
    def prompt_tokens(self) -> int:
        return prompt_tokens(self.segments)

    @property
    def max_tokens(self) -> int | None:
        return self.cls.max_tokens

    @property
    def priority(self) -> RequestPriority:
        return self.cls.priority


def interarrival(rng: random.Random, rate: float, cv: float) -> float:
    """Poisson (cv = 1) or gamma with shape 1/cv² (cv > 1: bursty; < 1: smoother)."""
    if cv == 1.0:
        return rng.expovariate(rate)
    shape = 1.0 / (cv * cv)
    return rng.gammavariate(shape, 1.0 / (rate * shape))


def pick_class(rng: random.Random, classes: Sequence[RequestClass]) -> RequestClass:
    return rng.choices(list(classes), weights=[c.share for c in classes])[0]


def zipf_index(rng: random.Random, n: int, s: float) -> int:
    """An index in 0..n-1 with P(i) ∝ 1/(i+1)^s."""
    weights = [1.0 / (i + 1) ** s for i in range(n)]
    return rng.choices(range(n), weights=weights)[0]


class Workload:
    """Base: a cached, arrival-ordered stream; subclasses implement :meth:`_generate`."""

    name = "workload"
    base_rate = 1.0  # mean requests/s at multiplier 1 (for reports and --rate)

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self._cache: list[BenchRequest] = []
        self._stream: Iterator[BenchRequest] | None = None
        self._exhausted = False

    def _generate(self) -> Iterator[BenchRequest]:
        raise NotImplementedError

    def _extend_to(self, t: float) -> None:
        if self._stream is None:
            self._stream = self._generate()
        while not self._exhausted and (not self._cache or self._cache[-1].arrival < t):
            nxt = next(self._stream, None)
            if nxt is None:
                self._exhausted = True
            else:
                self._cache.append(nxt)

    def requests(self, duration: float, multiplier: float = 1.0) -> list[BenchRequest]:
        """Requests arriving within ``duration`` s when time is compressed ``multiplier``×."""
        if multiplier <= 0 or duration <= 0:
            raise ValueError("duration and multiplier must be > 0")
        horizon = duration * multiplier
        self._extend_to(horizon)
        return [
            replace(r, arrival=r.arrival / multiplier) for r in self._cache if r.arrival < horizon
        ]

    def describe(self) -> dict[str, object]:
        return {"kind": self.name, "base_rate": self.base_rate, "seed": self.seed}


@dataclass
class SyntheticSpec:
    rate: float = 10.0  # requests/s
    arrival_cv: float = 1.0  # 1: Poisson; > 1: gamma, bursty
    prompt: LengthDist = field(default_factory=lambda: LengthDist(512, 1.0, 16, 4096))
    output: LengthDist = field(default_factory=lambda: LengthDist(128, 1.0, 1, 1024))
    classes: tuple[RequestClass, ...] = (DEFAULT_CLASS,)
    system_prompts: int = 0  # shared system prompts (0: every prompt unique)
    system_tokens: int = 0
    system_share: float = 1.0  # share of requests that start with a system prompt
    zipf: float = 1.0


class SyntheticWorkload(Workload):
    name = "synthetic"

    def __init__(self, spec: SyntheticSpec, seed: int = 0) -> None:
        super().__init__(seed)
        if spec.rate <= 0 or spec.arrival_cv <= 0:
            raise ValueError("rate and arrival_cv must be > 0")
        self.spec = spec
        self.base_rate = spec.rate

    def _generate(self) -> Iterator[BenchRequest]:
        spec, rng = self.spec, random.Random(self.seed)
        t, i = 0.0, 0
        while True:
            t += interarrival(rng, spec.rate, spec.arrival_cv)
            cls = pick_class(rng, spec.classes)
            segments: list[Segment] = []
            if spec.system_prompts and rng.random() < spec.system_share:
                k = zipf_index(rng, spec.system_prompts, spec.zipf)
                segments.append((segment_key(_NS_SYSTEM, self.seed, k), spec.system_tokens))
            prompt, output = cls.prompt or spec.prompt, cls.output or spec.output
            segments.append((segment_key(_NS_UNIQUE, self.seed, i), prompt.draw(rng)))
            out = output.draw(rng)
            if cls.max_tokens is not None:
                out = min(out, cls.max_tokens)
            yield BenchRequest(f"q{i}", t, tuple(segments), out, cls)
            i += 1

    def describe(self) -> dict[str, object]:
        s = self.spec
        return {
            **super().describe(),
            "arrival_cv": s.arrival_cv,
            "prompt_mean": s.prompt.mean,
            "output_mean": s.output.mean,
            "system_prompts": s.system_prompts,
            "system_tokens": s.system_tokens,
            "classes": [c.describe() for c in s.classes],
        }


@dataclass
class ChatSpec:
    session_rate: float = 1.0  # new conversations per second
    mean_turns: float = 5.0  # geometric number of turns
    think_s: float = 20.0  # mean pause between turns (exponential)
    system_prompts: int = 8
    system_tokens: int = 1024
    zipf: float = 1.0
    question: LengthDist = field(default_factory=lambda: LengthDist(120, 1.0, 8, 1024))
    answer: LengthDist = field(default_factory=lambda: LengthDist(220, 0.8, 8, 1024))
    classes: tuple[RequestClass, ...] = (DEFAULT_CLASS,)  # drawn per conversation
    max_prompt_tokens: int = 7168  # a conversation ends when its history would exceed this


class ChatWorkload(Workload):
    name = "chat"

    def __init__(self, spec: ChatSpec, seed: int = 0) -> None:
        super().__init__(seed)
        if spec.session_rate <= 0 or spec.mean_turns < 1:
            raise ValueError("session_rate must be > 0 and mean_turns >= 1")
        self.spec = spec
        self.base_rate = spec.session_rate * spec.mean_turns

    def _session(self, rng: random.Random, sid: int, start: float) -> list[BenchRequest]:
        spec = self.spec
        cls = pick_class(rng, spec.classes)
        k = zipf_index(rng, spec.system_prompts, spec.zipf)
        history: list[Segment] = [(segment_key(_NS_SYSTEM, self.seed, k), spec.system_tokens)]
        turns = 1 + int(math.log(1 - rng.random()) / math.log(1 - 1 / spec.mean_turns))
        out, t = [], start
        for turn in range(turns):
            question = (segment_key(_NS_USER, self.seed, sid, turn), spec.question.draw(rng))
            answer_len = spec.answer.draw(rng)
            segs = (*history, question)
            if prompt_tokens(segs) + answer_len > spec.max_prompt_tokens:
                break
            out.append(BenchRequest(f"s{sid}t{turn}", t, segs, answer_len, cls, f"s{sid}"))
            history = [*segs, (segment_key(_NS_ANSWER, self.seed, sid, turn), answer_len)]
            t += rng.expovariate(1.0 / spec.think_s)
        return out

    def _generate(self) -> Iterator[BenchRequest]:
        rng = random.Random(self.seed)
        pending: list[tuple[float, int, BenchRequest]] = []
        next_start, sid, tie = rng.expovariate(self.spec.session_rate), 0, 0
        while True:
            while not pending or next_start <= pending[0][0]:
                for req in self._session(rng, sid, next_start):
                    heapq.heappush(pending, (req.arrival, tie, req))
                    tie += 1
                sid += 1
                next_start += rng.expovariate(self.spec.session_rate)
            yield heapq.heappop(pending)[2]

    def describe(self) -> dict[str, object]:
        s = self.spec
        return {
            **super().describe(),
            "session_rate": s.session_rate,
            "mean_turns": s.mean_turns,
            "think_s": s.think_s,
            "system_prompts": s.system_prompts,
            "system_tokens": s.system_tokens,
            "classes": [c.describe() for c in s.classes],
        }


class TraceWorkload(Workload):
    name = "trace"

    def __init__(
        self,
        path: str | Path,
        *,
        fmt: TraceFormat | None = None,
        speedup: float = 1.0,
        sample: float = 1.0,
        classes: Sequence[RequestClass] = (DEFAULT_CLASS,),
        max_model_len: int = 8192,
        seed: int = 0,
        limit: int | None = None,
        reserve_tokens: int = 0,
    ) -> None:
        super().__init__(seed)
        if speedup <= 0 or not 0 < sample <= 1:
            raise ValueError("speedup must be > 0 and sample in (0, 1]")
        if not 0 <= reserve_tokens <= max_model_len - 2:
            raise ValueError("reserve_tokens must be in [0, max_model_len - 2]")
        self.path, self.speedup, self.sample = Path(path), speedup, sample
        self.classes = tuple(classes)
        self.max_model_len = max_model_len
        self.reserve_tokens = reserve_tokens
        self.fmt, self.limit = fmt, limit
        self.records = load_trace(path, limit, fmt)
        if not self.records:
            raise ValueError(f"{path}: the trace holds no requests")
        span = self.records[-1].arrival_s if len(self.records) > 1 else 1.0
        self.base_rate = len(self.records) * sample * speedup / max(span, 1e-9)
        self.span_s = span / speedup

    def _segments(self, i: int, prompt: int, block_ids: tuple[int, ...]) -> tuple[Segment, ...]:
        if not block_ids:
            return ((segment_key(_NS_UNIQUE, self.seed, i), prompt),)
        per = MOONCAKE_TOKENS_PER_BLOCK
        segs = [(segment_key(_NS_MOONCAKE, b), per) for b in block_ids]
        covered = per * len(segs)
        if covered < prompt:  # fewer ids than the length needs: the rest is unique
            segs.append((segment_key(_NS_UNIQUE, self.seed, i), prompt - covered))
        return clip(segs, prompt)

    def variant(self, **changes: object) -> TraceWorkload:
        """The same replay with some constructor arguments changed (``speedup``, ``sample``,
        ``reserve_tokens``, ...); the file is read again."""
        args: dict[str, object] = {
            "fmt": self.fmt,
            "speedup": self.speedup,
            "sample": self.sample,
            "classes": self.classes,
            "max_model_len": self.max_model_len,
            "seed": self.seed,
            "limit": self.limit,
            "reserve_tokens": self.reserve_tokens,
        }
        unknown = set(changes) - set(args)
        if unknown:
            raise TypeError(f"unknown TraceWorkload argument(s): {', '.join(sorted(unknown))}")
        return TraceWorkload(self.path, **{**args, **changes})  # type: ignore[arg-type]

    def _generate(self) -> Iterator[BenchRequest]:
        rng = random.Random(self.seed)
        context = self.max_model_len - self.reserve_tokens
        for i, rec in enumerate(self.records):
            keep = rng.random() < self.sample
            cls = pick_class(rng, self.classes)
            if not keep:
                continue
            output = max(1, rec.output_tokens)
            cap = cls.max_tokens or output
            output = min(output, cap, context // 2)
            prompt = min(rec.prompt_tokens, context - output)
            segs = self._segments(i, rec.prompt_tokens, rec.block_ids)
            yield BenchRequest(
                f"r{i}", rec.arrival_s / self.speedup, clip(segs, prompt), output, cls
            )

    def describe(self) -> dict[str, object]:
        return {
            **super().describe(),
            "path": str(self.path),
            "records": len(self.records),
            "speedup": self.speedup,
            "sample": self.sample,
            "span_s": self.span_s,
            "max_model_len": self.max_model_len,
            "reserve_tokens": self.reserve_tokens,
            "classes": [c.describe() for c in self.classes],
        }

"""Workloads: deterministic streams, rate scaling by time compression, chat histories, traces."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from vllm_control_plane.bench.prompts import block_hashes
from vllm_control_plane.bench.workloads import (
    ChatSpec,
    ChatWorkload,
    LengthDist,
    RequestClass,
    SyntheticSpec,
    SyntheticWorkload,
    TraceWorkload,
)
from vllm_control_plane.types import RequestPriority

TRACES = Path(__file__).resolve().parents[3] / "shared" / "traces"
MOONCAKE = TRACES / "mooncake_conversation.jsonl"
AZURE = TRACES / "azure_llm_2023_conv.csv"
needs_traces = pytest.mark.skipif(not MOONCAKE.exists(), reason="shared traces not present")


def synthetic(seed: int = 0, cv: float = 1.0) -> SyntheticWorkload:
    classes = (
        RequestClass("hi", 1, RequestPriority.HIGH, ttft_slo_ms=500),
        RequestClass("lo", 3, RequestPriority.LOW, e2e_slo_ms=60_000),
    )
    spec = SyntheticSpec(
        rate=20,
        arrival_cv=cv,
        classes=classes,
        system_prompts=4,
        system_tokens=256,
        prompt=LengthDist(200, 0.5, 16, 800),
    )
    return SyntheticWorkload(spec, seed)


def test_same_seed_same_stream_and_different_seed_differs() -> None:
    a, b = synthetic(1).requests(30), synthetic(1).requests(30)
    assert a == b
    assert synthetic(2).requests(30) != a


def test_multiplier_compresses_the_same_stream() -> None:
    wl = synthetic(3)
    base = wl.requests(60)
    double = wl.requests(30, 2.0)
    assert [r.request_id for r in double] == [r.request_id for r in base if r.arrival < 60]
    assert all(
        d.arrival == pytest.approx(b.arrival / 2) for d, b in zip(double, base, strict=False)
    )


def test_rate_mix_and_bursts() -> None:
    reqs = synthetic(4).requests(300)
    assert len(reqs) / 300 == pytest.approx(20, rel=0.1)
    share_hi = sum(r.cls.name == "hi" for r in reqs) / len(reqs)
    assert share_hi == pytest.approx(0.25, abs=0.05)

    def cv(rs) -> float:
        gaps = [b.arrival - a.arrival for a, b in itertools.pairwise(rs)]
        mean = sum(gaps) / len(gaps)
        return (sum((g - mean) ** 2 for g in gaps) / len(gaps)) ** 0.5 / mean

    assert cv(reqs) == pytest.approx(1.0, abs=0.15)
    assert cv(synthetic(4, cv=3.0).requests(300)) > 2.0


def test_system_prompts_are_shared() -> None:
    reqs = synthetic(5).requests(30)
    firsts = {r.segments[0] for r in reqs}
    assert len(firsts) <= 4  # 4 shared system prompts


def test_chat_turns_resend_the_history() -> None:
    spec = ChatSpec(session_rate=0.5, mean_turns=4, think_s=5, system_prompts=2, system_tokens=300)
    reqs = ChatWorkload(spec, seed=1).requests(200)
    by_session: dict[str, list] = {}
    for r in reqs:
        by_session.setdefault(r.session_id, []).append(r)
    multi = [turns for turns in by_session.values() if len(turns) > 2]
    assert multi
    for turns in multi:
        for prev, nxt in itertools.pairwise(turns):
            assert nxt.arrival > prev.arrival
            # the next prompt = previous prompt + previous answer + a new question
            assert nxt.segments[: len(prev.segments)] == prev.segments
            assert nxt.segments[len(prev.segments)][1] == prev.output_tokens
            hp, hn = block_hashes(prev.segments), block_hashes(nxt.segments)
            assert hn[: len(hp)] == hp
    assert all(r.prompt_tokens + r.output_tokens <= spec.max_prompt_tokens for r in reqs)


@needs_traces
def test_mooncake_ids_become_shared_prefix_segments() -> None:
    wl = TraceWorkload(MOONCAKE, max_model_len=32768, limit=200)
    reqs = wl.requests(10_000)
    assert len(reqs) == 200
    first = reqs[0]  # hash_ids 0..13, 6758 tokens
    assert first.prompt_tokens == 6758 and len(first.segments) == 14
    shared = [r for r in reqs[1:] if r.segments[0] == first.segments[0]]
    assert shared, "later requests reuse block 0"
    assert wl.base_rate > 0


@needs_traces
def test_trace_speedup_sample_and_context_clip() -> None:
    full = TraceWorkload(AZURE, limit=2000)
    fast = TraceWorkload(AZURE, limit=2000, speedup=2.0)
    assert fast.base_rate == pytest.approx(2 * full.base_rate)
    assert fast.requests(1e6)[10].arrival == pytest.approx(full.requests(1e6)[10].arrival / 2)
    thin = TraceWorkload(AZURE, limit=2000, sample=0.5, seed=3)
    assert 850 < len(thin.requests(1e6)) < 1150
    short = TraceWorkload(AZURE, limit=2000, max_model_len=1024)
    assert all(r.prompt_tokens + r.output_tokens <= 1024 for r in short.requests(1e6))


def test_trace_reserve_keeps_context_free_and_variant_keeps_the_rest(tmp_path: Path) -> None:
    trace = tmp_path / "t.csv"
    trace.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:15:46,5000,100\n2023-11-16 18:15:48,300,2000\n2023-11-16 18:15:50,9,9\n"
    )
    exact = TraceWorkload(trace, max_model_len=1024)
    assert [(r.prompt_tokens, r.output_tokens) for r in exact.requests(100)] == [
        (924, 100),
        (300, 512),
        (9, 9),
    ]
    live = exact.variant(reserve_tokens=16, speedup=2.0)
    assert (live.max_model_len, live.speedup, live.reserve_tokens) == (1024, 2.0, 16)
    assert [(r.prompt_tokens, r.output_tokens) for r in live.requests(100)] == [
        (908, 100),
        (300, 504),
        (9, 9),
    ]
    assert live.requests(100)[1].arrival == pytest.approx(1.0)
    with pytest.raises(TypeError, match="nope"):
        exact.variant(nope=1)
    with pytest.raises(ValueError, match="reserve_tokens"):
        TraceWorkload(trace, max_model_len=64, reserve_tokens=63)
    empty = tmp_path / "e.csv"
    empty.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n")
    with pytest.raises(ValueError, match="no requests"):
        TraceWorkload(empty)

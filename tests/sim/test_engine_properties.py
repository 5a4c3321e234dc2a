"""Property tests of SimEngine: conservation, bounds, liveness, prefix-hit soundness.

Each example builds a random workload (shared prefixes, chunking, aborts) on a deliberately
small KV pool so preemption happens, steps the engine one beat at a time and checks the
invariants after every beat.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vllm_control_plane.sim.engine import SimEngine
from vllm_control_plane.sim.kv_cache import hash_token_blocks
from vllm_control_plane.sim.types import EngineRequest, EngineSpec

MAX_LEN = 512


@dataclass(frozen=True)
class Job:
    request: EngineRequest
    tokens: tuple[int, ...]
    arrive: int  # beat index at which it is added
    abort_at: int | None


@st.composite
def workloads(draw: st.DrawFn) -> tuple[EngineSpec, list[Job]]:
    bs = draw(st.sampled_from([4, 16]))
    spec = EngineSpec(
        block_size=bs,
        num_gpu_blocks_override=draw(st.integers(MAX_LEN // bs, 3 * MAX_LEN // bs)),
        max_model_len=MAX_LEN,
        max_num_seqs=draw(st.integers(1, 12)),
        max_num_batched_tokens=draw(st.sampled_from([32, 100, 512])),
        pp=draw(st.sampled_from([1, 1, 2])),
        mean_output_tokens=draw(st.sampled_from([5.0, 40.0])),
        seed=draw(st.integers(0, 3)),
    )
    jobs = []
    for i in range(draw(st.integers(1, 14))):
        group = draw(st.integers(0, 2))
        shared = draw(st.integers(0, 300))
        prompt = draw(st.integers(max(1, shared), 450))
        tokens = tuple(range(group * 10_000, group * 10_000 + shared)) + tuple(
            range(1_000_000 * (i + 1), 1_000_000 * (i + 1) + prompt - shared)
        )
        max_tokens = draw(st.integers(1, min(120, MAX_LEN - prompt)))
        req = EngineRequest(
            f"r{i}",
            prompt,
            max_tokens,
            hash_token_blocks(tokens, bs),
            ignore_eos=draw(st.booleans()),
            min_tokens=draw(st.integers(0, min(3, max_tokens))),
        )
        abort_at = draw(st.none() | st.integers(0, 200))
        jobs.append(Job(req, tokens, draw(st.integers(0, 59)), abort_at))
    return spec, jobs


def check_pool(engine: SimEngine) -> None:
    """Blocks are conserved: what requests hold plus what is free is the whole pool."""
    pool, bs = engine._pool, engine.block_size
    held: dict[int, int] = {}
    anon = 0
    for seq in engine._running:
        assert seq.table.num_blocks == -(-seq.num_computed // bs)
        anon += seq.table.num_anon
        for h in seq.table.hashed:
            held[h] = held.get(h, 0) + 1
    for seq in engine._waiting:
        assert seq.table.num_blocks == 0 and seq.num_computed == 0
    assert all(pool._ref[h] == n for h, n in held.items())
    assert anon + len(held) == pool.used_blocks <= pool.num_blocks
    assert pool.free_blocks >= 0 and 0.0 <= engine.stats().kv_cache_usage_perc <= 1.0
    assert len(engine._running) <= engine.max_num_seqs


def common_blocks(a: tuple[int, ...], b: tuple[int, ...], bs: int) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n // bs


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workloads())
def test_engine_invariants(case: tuple[EngineSpec, list[Job]]) -> None:
    spec, jobs = case
    engine = SimEngine(spec)
    bs = spec.block_size
    outputs: dict[str, int] = {}
    ended: dict[str, str] = {}
    first_cached: dict[str, int] = {}
    beat, now = 0, 0.0
    while beat < 60 or engine.has_unfinished():
        assert beat < 50_000, "engine did not drain"
        for job in jobs:
            if job.arrive == beat:
                engine.add_request(job.request, now)
            if job.abort_at == beat and engine.abort(job.request.request_id):
                ended[job.request.request_id] = "abort"
        res = engine.step(now)
        now += res.duration
        assert res.num_scheduled_tokens <= engine.max_num_batched_tokens
        for out in res.outputs:
            rid = out.request_id
            assert rid not in ended
            assert out.num_output_tokens == outputs.get(rid, 0) + 1  # one token per beat
            outputs[rid] = out.num_output_tokens
            if out.first_token:
                first_cached[rid] = out.num_cached_tokens
            if out.finish_reason:
                ended[rid] = out.finish_reason
        check_pool(engine)
        beat += 1

    by_id = {j.request.request_id: j for j in jobs}
    assert set(ended) == set(by_id)  # every request finished or was aborted
    for rid, reason in ended.items():
        req = by_id[rid].request
        if reason != "abort":
            n = outputs[rid]
            assert req.min_tokens <= n <= req.max_tokens
            assert (reason == "length") == (n == req.max_tokens)
            if req.ignore_eos:
                assert n == req.max_tokens
    for rid, cached in first_cached.items():  # hits only on identical chains
        job = by_id[rid]
        best = max(
            (common_blocks(job.tokens, o.tokens, bs) for o in jobs if o is not job), default=0
        )
        assert cached % bs == 0 and cached <= min(best * bs, job.request.prompt_tokens - 1)
    stats = engine.stats()
    assert engine._pool.used_blocks == 0 and stats.kv_cache_usage_perc == 0.0
    assert stats.generation_tokens == sum(outputs.values())
    assert sum(stats.request_success.values()) == len(jobs)
    assert stats.prefix_cache_hits <= stats.prefix_cache_queries


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 1000), st.integers(2, 6))
def test_memory_pressure_preempts_but_finishes_everything(seed: int, n: int) -> None:
    engine = SimEngine(
        EngineSpec(num_gpu_blocks_override=MAX_LEN // 16, max_model_len=MAX_LEN, seed=seed)
    )
    for i in range(n):
        engine.add_request(EngineRequest(f"r{i}", 200, 250, ignore_eos=True), 0.0)
    done, now = {}, 0.0
    while engine.has_unfinished():
        res = engine.step(now)
        now += res.duration
        done.update({o.request_id: o.num_output_tokens for o in res.outputs if o.finish_reason})
        stats = engine.stats()
        assert stats.num_requests_running + stats.num_requests_waiting == n - len(done)
    assert done == {f"r{i}": 250 for i in range(n)}
    assert engine.stats().num_preemptions > 0

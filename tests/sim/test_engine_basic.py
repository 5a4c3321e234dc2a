"""SimEngine: the contract, input validation, lengths, abort, chunked prefill, stats."""

from __future__ import annotations

import pytest

from vllm_control_plane.sim.engine import SimEngine
from vllm_control_plane.sim.kv_cache import hash_trace_blocks
from vllm_control_plane.sim.types import EngineInputError, EngineRequest, EngineSpec, TokenOutput

Events = list[tuple[float, TokenOutput]]


def run(engine: SimEngine, now: float = 0.0, max_steps: int = 100_000) -> Events:
    """Step until idle; return (effective time, output) pairs."""
    events = []
    for _ in range(max_steps):
        if not engine.has_unfinished():
            return events
        res = engine.step(now)
        now += res.duration
        events.extend((now, o) for o in res.outputs)
    raise AssertionError("engine did not drain")


def finishes(events: list[tuple[float, TokenOutput]]) -> dict[str, TokenOutput]:
    return {o.request_id: o for _, o in events if o.finish_reason}


def test_contract_properties_take_vllm_defaults() -> None:
    e = SimEngine(EngineSpec(model="llama-3-8b", gpu="H100"))
    assert (e.max_num_seqs, e.max_num_batched_tokens, e.block_size) == (1024, 8192, 16)
    assert e.max_model_len == 8192 and e.served_model_name == "llama-3-8b"
    assert e.num_gpu_blocks > 20_000 and e.spec.gpu == "H100"
    a100 = SimEngine(EngineSpec(gpu="A100-80G", served_model_name="x", max_model_len=4096))
    assert (a100.max_num_seqs, a100.max_num_batched_tokens) == (256, 2048)
    assert a100.max_model_len == 4096 and a100.served_model_name == "x"


def test_idle_step_is_zero_and_empty() -> None:
    res = SimEngine(EngineSpec()).step(5.0)
    assert res.duration == 0.0 and res.outputs == ()


def test_ignore_eos_generates_exactly_max_tokens() -> None:
    e = SimEngine(EngineSpec())
    e.add_request(EngineRequest("a", 100, 37, ignore_eos=True), 0.0)
    events = run(e)
    assert [o.num_output_tokens for _, o in events] == list(range(1, 38))
    assert events[0][1].first_token and not any(o.first_token for _, o in events[1:])
    assert finishes(events)["a"].finish_reason == "length"


def test_hint_min_tokens_and_caps() -> None:
    e = SimEngine(EngineSpec(max_model_len=1024))
    e.add_request(EngineRequest("hint", 10, 100, output_tokens_hint=20), 0.0)
    e.add_request(EngineRequest("capped", 10, 15, output_tokens_hint=20), 0.0)
    e.add_request(EngineRequest("min", 10, 100, output_tokens_hint=3, min_tokens=8), 0.0)
    done = finishes(run(e))
    assert (done["hint"].num_output_tokens, done["hint"].finish_reason) == (20, "stop")
    assert (done["capped"].num_output_tokens, done["capped"].finish_reason) == (15, "length")
    assert done["min"].num_output_tokens == 8


def test_natural_lengths_follow_the_mean_and_ignore_arrival_order() -> None:
    spec = EngineSpec(mean_output_tokens=50, max_model_len=4096, seed=7)
    reqs = [EngineRequest(f"r{i}", 16, 2000) for i in range(300)]
    lengths = []
    for order in (reqs, reqs[::-1]):
        e = SimEngine(spec)
        for r in order:
            e.add_request(r, 0.0)
        lengths.append({k: o.num_output_tokens for k, o in finishes(run(e)).items()})
    assert lengths[0] == lengths[1]
    mean = sum(lengths[0].values()) / len(lengths[0])
    assert 40 < mean < 60


def test_context_overflow_is_rejected_with_vllms_message() -> None:
    e = SimEngine(EngineSpec(max_model_len=1000))
    with pytest.raises(EngineInputError) as err:
        e.add_request(EngineRequest("a", 900, 200), 0.0)
    assert str(err.value) == (
        "This model's maximum context length is 1000 tokens. However, you requested 1100 tokens "
        "(900 in the messages, 200 in the completion). Please reduce the length of the messages "
        "or completion."
    )
    e.add_request(EngineRequest("b", 900, 100, ignore_eos=True), 0.0)  # exactly at the limit
    assert finishes(run(e))["b"].num_output_tokens == 100


@pytest.mark.parametrize(
    "req",
    [
        EngineRequest("bad", 0, 10),
        EngineRequest("bad", 10, 0),
        EngineRequest("bad", 10, 5, min_tokens=6),
        EngineRequest("bad", 10, 5, min_tokens=-1),
    ],
)
def test_invalid_requests_leave_no_state(req: EngineRequest) -> None:
    e = SimEngine(EngineSpec())
    with pytest.raises(EngineInputError):
        e.add_request(req, 0.0)
    assert not e.has_unfinished() and e.stats().num_requests_waiting == 0


def test_duplicate_id_rejected_and_original_unaffected() -> None:
    e = SimEngine(EngineSpec())
    e.add_request(EngineRequest("a", 100, 5, ignore_eos=True), 0.0)
    e.step(0.0)
    before = e.stats()
    with pytest.raises(EngineInputError, match="already running"):
        e.add_request(EngineRequest("a", 50, 5), 0.0)
    assert e.stats() == before
    assert finishes(run(e))["a"].num_output_tokens == 5
    e.add_request(EngineRequest("a", 50, 5), 1.0)  # the id is free again once finished


def test_abort_frees_blocks_for_waiting_and_running() -> None:
    e = SimEngine(EngineSpec(max_num_seqs=1))
    e.add_request(EngineRequest("run", 1000, 100), 0.0)
    e.add_request(EngineRequest("wait", 1000, 100), 0.0)
    e.step(0.0)
    st = e.stats()
    assert (st.num_requests_running, st.num_requests_waiting) == (1, 1)
    assert st.kv_cache_usage_perc > 0
    assert e.abort("wait") and e.abort("run")
    assert not e.abort("run") and not e.abort("never")
    st = e.stats()
    assert st.kv_cache_usage_perc == 0.0 and not e.has_unfinished()
    assert st.request_success == {"abort": 2}
    assert e.step(1.0).duration == 0.0


def test_chunked_prefill_spans_steps_within_budget() -> None:
    e = SimEngine(EngineSpec(gpu="A100-80G"))  # budget 2048
    e.add_request(EngineRequest("long", 5000, 3, ignore_eos=True), 0.0)
    scheduled, first_at = [], None
    for i in range(10):
        res = e.step(float(i))
        scheduled.append(res.num_scheduled_tokens)
        if any(o.first_token for o in res.outputs):
            first_at = i
            break
    assert scheduled == [2048, 2048, 904] and first_at == 2


def test_decode_runs_beside_a_chunked_prefill() -> None:
    e = SimEngine(EngineSpec(gpu="A100-80G"))
    e.add_request(EngineRequest("short", 10, 50, ignore_eos=True), 0.0)
    e.step(0.0)
    e.add_request(EngineRequest("long", 5000, 3, ignore_eos=True), 0.0)
    res = e.step(1.0)
    assert res.num_scheduled_tokens == 2048 and res.num_running == 2
    assert [o.request_id for o in res.outputs] == ["short"]


def test_prefix_cache_hits_identical_chains_only() -> None:
    e = SimEngine(EngineSpec())
    shared = hash_trace_blocks([1, 2], num_tokens=1024)
    other = hash_trace_blocks([9, 2], num_tokens=1024)
    e.add_request(EngineRequest("a", 1024, 2, shared, ignore_eos=True), 0.0)
    run(e)
    e.add_request(EngineRequest("b", 1024, 2, shared, ignore_eos=True), 0.0)
    e.add_request(EngineRequest("c", 1024, 2, other, ignore_eos=True), 0.0)
    first = {o.request_id: o for _, o in run(e) if o.first_token}
    assert first["b"].num_cached_tokens == 1024 - 16  # at most prompt - 1, whole blocks
    assert first["c"].num_cached_tokens == 0
    st = e.stats()
    assert st.prefix_cache_queries == 3 * 1024 and st.prefix_cache_hits == 1008


def test_prefix_caching_can_be_disabled() -> None:
    e = SimEngine(EngineSpec(enable_prefix_caching=False))
    h = hash_trace_blocks([1], num_tokens=512)
    for rid in ("a", "b"):
        e.add_request(EngineRequest(rid, 512, 2, h), 0.0)
        assert all(o.num_cached_tokens == 0 for _, o in run(e))
    assert e.stats().prefix_cache_hits == 0


def test_stats_counters_follow_vllm_semantics() -> None:
    e = SimEngine(EngineSpec())
    e.add_request(EngineRequest("a", 100, 10, ignore_eos=True), 0.0)
    e.add_request(EngineRequest("b", 50, 20, output_tokens_hint=4), 0.0)
    run(e)
    st = e.stats()
    assert st.prompt_tokens == 150 and st.generation_tokens == 14
    assert st.request_success == {"length": 1, "stop": 1}
    assert st.num_requests_running == st.num_requests_waiting == 0


def test_same_seed_same_outputs_different_seed_different_timing() -> None:
    def trace(seed: int) -> list[tuple[float, TokenOutput]]:
        e = SimEngine(EngineSpec(seed=seed, jitter=0.05))
        for i in range(20):
            e.add_request(EngineRequest(f"r{i}", 100 + 37 * i, 300), 0.0)
        return run(e)

    assert trace(3) == trace(3)
    assert trace(3) != trace(4)


def test_preemption_recomputes_and_everything_finishes() -> None:
    spec = EngineSpec(num_gpu_blocks_override=64, max_model_len=1024, block_size=16)
    e = SimEngine(spec)
    for i in range(8):
        e.add_request(EngineRequest(f"r{i}", 300, 300, ignore_eos=True), 0.0)
    events, preempted, now = [], [], 0.0
    while e.has_unfinished():
        res = e.step(now)
        now += res.duration
        preempted.extend(res.preempted)
        events.extend(res.outputs)
        assert e.stats().kv_cache_usage_perc <= 1.0
    assert preempted and e.stats().num_preemptions == len(preempted)
    done = {o.request_id: o.num_output_tokens for o in events if o.finish_reason}
    assert done == {f"r{i}": 300 for i in range(8)}
    assert sum(o.first_token for o in events) == 8  # a recompute emits no second first token


def test_pipeline_parallel_interleaves_micro_batches() -> None:
    def single_latency(pp: int) -> float:
        e = SimEngine(EngineSpec(model="llama-3-70b", tp=4, pp=pp, jitter=0.0))
        e.add_request(EngineRequest("a", 512, 64, ignore_eos=True), 0.0)
        return run(e)[-1][0]

    def throughput(pp: int) -> float:
        e = SimEngine(EngineSpec(model="llama-3-70b", tp=4, pp=pp, jitter=0.0))
        for i in range(256):
            e.add_request(EngineRequest(f"r{i}", 512, 128, ignore_eos=True), 0.0)
        return 256 * 128 / run(e)[-1][0]

    assert single_latency(2) >= single_latency(1)
    assert throughput(2) > 1.2 * throughput(1)
    pp2 = SimEngine(EngineSpec(model="llama-3-70b", tp=4, pp=2))
    assert pp2.num_gpu_blocks > SimEngine(EngineSpec(model="llama-3-70b", tp=4)).num_gpu_blocks


def test_engine_refuses_to_start_when_one_request_cannot_fit() -> None:
    with pytest.raises(ValueError, match="max seq len"):
        SimEngine(EngineSpec(num_gpu_blocks_override=10, max_model_len=1024))
    with pytest.raises(ValueError, match="No available memory"):
        SimEngine(EngineSpec(model="llama-3-70b", gpu="H100"))
    with pytest.raises(ValueError, match="unknown model"):
        SimEngine(EngineSpec(model="nope"))

"""The multi-step fast path and the virtual-time driver.

``SimEngine.advance`` must give exactly what stepping one beat at a time gives: same records,
same float times, same counters, on random workloads that exercise block pressure, preemption,
queued requests, prefix sharing and pipeline parallelism.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vllm_control_plane.sim.engine import SimEngine
from vllm_control_plane.sim.kv_cache import hash_trace_blocks
from vllm_control_plane.sim.types import EngineRequest, EngineSpec
from vllm_control_plane.sim.virtual import (
    Arrival,
    VirtualFleet,
    least_loaded,
    round_robin,
    run_virtual,
)


@st.composite
def fleets(draw: st.DrawFn) -> tuple[list[EngineSpec], list[Arrival]]:
    small = draw(st.booleans())
    specs = [
        EngineSpec(
            num_gpu_blocks_override=draw(st.integers(64, 160)) if small else None,
            max_model_len=1024,
            max_num_seqs=draw(st.sampled_from([2, 8, 64])),
            max_num_batched_tokens=draw(st.sampled_from([256, 2048])),
            pp=draw(st.sampled_from([1, 1, 2])),
            seed=i,
        )
        for i in range(draw(st.integers(1, 3)))
    ]
    arrivals = []
    t = 0.0
    for i in range(draw(st.integers(1, 25))):
        t += draw(st.floats(0.0, 0.5))
        prompt = draw(st.integers(1, 700))
        ids = draw(st.lists(st.integers(0, 3), max_size=2))
        req = EngineRequest(
            f"r{i}",
            prompt,
            draw(st.integers(1, 1024 - prompt)),
            hash_trace_blocks(ids, tokens_per_id=64, num_tokens=prompt),
            ignore_eos=draw(st.booleans()),
        )
        arrivals.append(Arrival(t, req))
    return specs, arrivals


def replay(specs: list[EngineSpec], arrivals: list[Arrival], fast: bool) -> tuple:
    engines = [SimEngine(s) for s in specs]
    records = run_virtual(engines, arrivals, least_loaded, fast_path=fast)
    return [
        (
            r.request_id,
            r.engine,
            r.first_token_time,
            r.finish_time,
            r.output_tokens,
            r.cached_tokens,
            r.finish_reason,
        )
        for r in records
    ], [e.stats() for e in engines]


@settings(max_examples=40, deadline=None)
@given(fleets())
def test_fast_path_equals_stepping(case: tuple[list[EngineSpec], list[Arrival]]) -> None:
    specs, arrivals = case
    assert replay(specs, arrivals, fast=True) == replay(specs, arrivals, fast=False)


def test_advance_runs_many_beats_and_stops_at_a_finish() -> None:
    e = SimEngine(EngineSpec())
    e.add_request(EngineRequest("a", 100, 50, ignore_eos=True), 0.0)
    e.add_request(EngineRequest("b", 100, 80, ignore_eos=True), 0.0)
    assert e.advance(0.0, math.inf).num_steps == 0  # prefill pending: must step
    t = e.step(0.0).duration
    adv = e.advance(t, math.inf)
    assert adv.num_steps == 49 and [o.request_id for o in adv.finished] == ["a"]
    assert adv.finished[0].num_output_tokens == 50 and adv.finished[0].finish_reason == "length"
    stopped = e.advance(adv.end_time, adv.end_time + 0.05)  # an arrival is due in 50 ms
    assert 0 < stopped.num_steps < 30 and stopped.finished == ()
    assert e.stats().generation_tokens == 2 + 49 * 2 + stopped.num_steps


def test_advance_stops_before_blocks_run_out() -> None:
    e = SimEngine(EngineSpec(num_gpu_blocks_override=70, max_model_len=1024))
    for i in range(2):
        e.add_request(EngineRequest(f"r{i}", 512, 500, ignore_eos=True), 0.0)
    t = e.step(0.0).duration
    adv = e.advance(t, math.inf)
    assert adv.num_steps > 0 and adv.finished == ()
    res = e.step(adv.end_time)  # the beat the fast path refused needs a preemption
    assert res.preempted


def test_fleet_records_times_and_routes() -> None:
    engines = [SimEngine(EngineSpec(seed=i)) for i in range(3)]
    reqs = [EngineRequest(f"r{i}", 200, 20, ignore_eos=True) for i in range(9)]
    arrivals = [Arrival(0.1 * i, r) for i, r in enumerate(reqs)]
    records = run_virtual(engines, arrivals, round_robin())
    assert [r.engine for r in records] == [0, 1, 2] * 3
    for r in records:
        assert r.arrival < r.first_token_time < r.finish_time
        assert (r.output_tokens, r.finish_reason, r.error) == (20, "length", None)
    assert all(not e.has_unfinished() for e in engines)


def test_fleet_rejects_bad_input_and_aborts() -> None:
    fleet = VirtualFleet([SimEngine(EngineSpec(max_model_len=1024))])
    bad = fleet.submit(0, EngineRequest("bad", 1000, 100), 0.0)
    assert bad.error and "maximum context length" in bad.error
    fleet.submit(0, EngineRequest("long", 100, 500, ignore_eos=True), 0.0)
    assert fleet.abort("long", 0.5) and not fleet.abort("long", 0.6)
    fleet.run_to_completion()
    long = fleet.records[1]
    assert long.finish_reason == "abort" and long.finish_time == 0.5
    assert 0 < long.output_tokens < 500
    assert fleet.engines[0].stats().kv_cache_usage_perc == 0.0


def test_arrival_without_engine_or_route_is_an_error() -> None:
    with pytest.raises(ValueError, match="no engine"):
        run_virtual([SimEngine(EngineSpec())], [Arrival(0.0, EngineRequest("a", 1, 1))])


def test_explicit_engine_index_wins_over_route() -> None:
    engines = [SimEngine(EngineSpec()), SimEngine(EngineSpec())]
    records = run_virtual(
        engines, [Arrival(0.0, EngineRequest("a", 10, 2), engine=1)], lambda a, e, now: 0
    )
    assert records[0].engine == 1

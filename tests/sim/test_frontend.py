"""vLLM's front end in the simulator: the time before the engine sees a request.

It is part of the TTFT a server reports (vLLM stamps arrival in its API server) but not of the
queue time, a burst queues behind it, and a client leaving while its request is still there
leaves nothing behind in the engine.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from vllm_control_plane.sim.frontend import FrontEndModel
from vllm_control_plane.sim.launcher import SimServer
from vllm_control_plane.sim.profiles import get_gpu
from vllm_control_plane.sim.types import EngineSpec


def test_handoffs_queue_in_arrival_order_and_idle_time_is_not_banked() -> None:
    fe = FrontEndModel(per_request_s=0.002, per_prompt_token_s=1e-6)
    # three arrivals at once: each waits for the ones before it
    assert [fe.handoff_time(1.0, 1000) for _ in range(3)] == pytest.approx([1.003, 1.006, 1.009])
    # an arrival after the front end went idle waits only for itself
    assert fe.handoff_time(5.0, 0) == pytest.approx(5.002)


def test_requests_in_flight_slow_the_front_end_down() -> None:
    fe = FrontEndModel(per_request_s=0.002, per_active_s=0.0002)
    assert fe.handoff_time(1.0, 64, in_flight=0) == pytest.approx(1.002)
    assert fe.handoff_time(2.0, 64, in_flight=10) == pytest.approx(2.004)


def test_disabled_front_end_hands_over_at_once() -> None:
    assert FrontEndModel().handoff_time(3.0, 10_000) == 3.0
    with pytest.raises(ValueError, match=">= 0"):
        FrontEndModel(per_request_s=-1.0)


def test_cpu_profile_models_a_front_end_and_gpus_do_not() -> None:
    cpu = get_gpu("CPU")
    assert cpu.t_frontend > 0 and cpu.t_frontend_token > 0 and cpu.t_frontend_active > 0
    h100 = get_gpu("H100")
    assert h100.t_frontend == h100.t_frontend_token == h100.t_frontend_active == 0


async def _histogram_sums(srv: SimServer) -> dict[str, float]:
    async with aiohttp.ClientSession() as s, s.get(srv.url + "/metrics") as r:
        text = await r.text()
    return {
        sample.name: sample.value
        for fam in text_string_to_metric_families(text)
        for sample in fam.samples
        if sample.name.endswith(("_sum", "_count"))
    }


async def test_server_ttft_holds_the_front_end_and_queue_time_does_not() -> None:
    spec = EngineSpec(model="tiny-llama", gpu="CPU", max_model_len=1024, seed=3)
    prompt = list(range(1, 701))  # token ids: 700 prompt tokens
    async with SimServer(spec, time_scale=0.05) as srv, aiohttp.ClientSession() as s:
        for _ in range(3):  # one at a time: the front end is idle at each arrival
            body = {"model": "tiny-llama", "prompt": prompt, "max_tokens": 4, "ignore_eos": True}
            async with s.post(srv.url + "/v1/completions", json=body) as r:
                assert r.status == 200
                await r.read()
        m = await _histogram_sums(srv)
    assert m["vllm:time_to_first_token_seconds_count"] == 3
    assert m["vllm:request_prefill_time_seconds_count"] == 3
    assert m["vllm:request_decode_time_seconds_count"] == 3
    # TTFT = front end + queue + prefill, exactly, for each request
    front_end = (
        m["vllm:time_to_first_token_seconds_sum"]
        - m["vllm:request_queue_time_seconds_sum"]
        - m["vllm:request_prefill_time_seconds_sum"]
    )
    cpu = get_gpu("CPU")
    assert front_end == pytest.approx(3 * (cpu.t_frontend + 700 * cpu.t_frontend_token))
    # inference = prefill + decode
    assert m["vllm:request_inference_time_seconds_sum"] == pytest.approx(
        m["vllm:request_prefill_time_seconds_sum"] + m["vllm:request_decode_time_seconds_sum"]
    )


async def test_client_leaving_inside_the_front_end_leaves_the_engine_untouched(
    sim_spec: EngineSpec, wait_until
) -> None:
    async with SimServer(sim_spec, time_scale=0.02) as srv:
        srv.service.frontend = FrontEndModel(per_request_s=600.0)  # 12 s of wall time
        async with aiohttp.ClientSession() as s:
            body = {"model": "llama-3-8b", "prompt": "hello", "max_tokens": 4, "stream": True}

            async def read_all() -> bytes:
                async with s.post(srv.url + "/v1/completions", json=body) as r:
                    return await r.read()

            task = asyncio.create_task(read_all())
            await wait_until(lambda: srv.service.num_active == 1, what="request in front end")
            assert not srv.engine.has_unfinished()  # not handed to the engine yet
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        await wait_until(lambda: srv.service.num_active == 0, what="request released")
        await asyncio.sleep(0)
        stats = srv.engine.stats()
        assert stats.num_requests_running == 0 == stats.num_requests_waiting
        assert not srv.engine.has_unfinished()

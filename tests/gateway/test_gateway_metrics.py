"""``/metrics``: parsed with prometheus_client's text parser and checked against what was sent."""

from __future__ import annotations

import asyncio

from prometheus_client.parser import text_string_to_metric_families
from tests.gateway.conftest import CHAT, eventually, sim


def _samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


def _total(samples, name: str, **labels: str) -> float:
    return sum(
        v for lab, v in samples.get(name, []) if all(lab.get(k) == x for k, x in labels.items())
    )


async def test_metrics_match_the_requests_sent(start_gateway, http) -> None:
    gw = await start_gateway(
        simulated=[sim("sim-a"), {"name": "big", "model": "llama-3-70b", "tp": 4,
                                  "time_scale": 0.02, "mean_output_tokens": 8.0}],
    )  # fmt: skip
    url = gw.url + "/v1/chat/completions"

    async def post(model: str, priority: str, **extra: object) -> int:
        body = {"model": model, "messages": CHAT, "max_tokens": 5, **extra}
        headers = {"X-Priority": priority, "X-SLO-Deadline-Ms": "60000"}
        async with http.post(url, json=body, headers=headers) as r:
            await r.read()
            return r.status

    sent = [("llama-3-8b", "high")] * 3 + [("llama-3-8b", "low")] * 2 + [("llama-3-70b", "normal")]
    statuses = await asyncio.gather(*(post(m, p) for m, p in sent))
    assert statuses == [200] * 6
    assert await post("gpt-4", "normal") == 404
    assert await post("llama-3-8b", "normal", n=3) == 400
    async with http.get(gw.url + "/metrics") as resp:
        assert resp.status == 200 and resp.content_type == "text/plain"
        samples = _samples(await resp.text())

    assert _total(samples, "vcp_requests_total", status="completed") == 6
    assert _total(samples, "vcp_requests_total", model="llama-3-8b", priority="high") == 3
    assert _total(samples, "vcp_requests_total", model="llama-3-8b", priority="low") == 2
    assert _total(samples, "vcp_requests_total", model="llama-3-70b", priority="normal") == 1
    for hist in ("vcp_time_to_first_token_seconds", "vcp_e2e_request_latency_seconds",
                 "vcp_request_queue_time_seconds"):  # fmt: skip
        assert _total(samples, hist + "_count") == 6, hist
        assert _total(samples, hist + "_count", model="llama-3-70b") == 1
    assert _total(samples, "vcp_time_per_output_token_seconds_count") >= 1
    assert _total(samples, "vcp_rejections_total", reason="model_not_found") == 1
    assert _total(samples, "vcp_rejections_total", reason="invalid_value") == 1
    assert _total(samples, "vcp_slo_violations_total") == 0
    assert _total(samples, "vcp_cost_usd_total") > 0
    assert _total(samples, "vcp_tokens_total", kind="completion") <= 30
    assert _total(samples, "vcp_retries_total") == 0
    healthy = {lab["instance"]: v for lab, v in samples["vcp_instance_healthy"]}
    assert healthy == {"sim-a": 1.0, "big": 1.0}
    assert {lab["priority"] for lab, _ in samples["vcp_queue_depth"]} == {
        "critical", "high", "normal", "low", "background"}  # fmt: skip
    assert _total(samples, "vcp_instance_in_flight") == 0
    assert _total(samples, "vcp_in_flight_requests") == 0
    info = samples["vcp_scheduling_info"][0][0]
    assert info["policy"] == "adaptive" and info["strategy"] == "predictive"


async def test_metrics_show_unhealthy_instance(start_gateway, http) -> None:
    gw = await start_gateway(simulated=[sim("ok"), sim("sick", faults={"unhealthy": True})])
    await eventually(lambda: not gw.gateway.cp.core.instance("sick").is_healthy)
    async with http.get(gw.url + "/metrics") as resp:
        samples = _samples(await resp.text())
    healthy = {lab["instance"]: v for lab, v in samples["vcp_instance_healthy"]}
    assert healthy == {"ok": 1.0, "sick": 0.0}

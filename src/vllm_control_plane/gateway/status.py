"""``GET /status``: the read-only, non-secret view of the gateway that the dashboard polls.

Built field by field from a whitelist, so nothing new leaks into it by accident: the fleet
(instances, models, health, load, in flight, the engines' scraped queues and KV usage, circuit
state), the scheduling policy and routing strategy, queue depth by priority, the request
counters and the aggregate latency / throughput / SLO / cost figures. Never prompts, request ids,
tenant names or keys, tokens, instance URLs or the config path — those stay behind ``/admin``.

Who may read it (``auth.check_status``): everyone when no admin token is configured (``vcp
serve`` with no config, so its dashboard works on the first command), else the admin token.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from aiohttp import web

from vllm_control_plane.gateway.openai_routes import GATEWAY_KEY
from vllm_control_plane.gateway.service import Gateway

_INSTANCE_FIELDS = (
    "instance_id", "model_name", "is_healthy", "is_available", "current_load",
    "active_requests", "max_concurrent_requests", "concurrency_limit", "num_requests_running",
    "num_requests_waiting", "kv_cache_usage", "avg_latency_ms", "total_requests",
    "failed_requests", "circuit", "out_of_rotation",
)  # fmt: skip
_METRIC_FIELDS = (
    "requests_per_second", "tokens_per_second", "avg_latency_ms", "p50_latency_ms",
    "p95_latency_ms", "p99_latency_ms", "avg_ttft_ms", "p50_ttft_ms", "p95_ttft_ms",
    "p99_ttft_ms", "p50_tpot_ms", "p99_tpot_ms", "prompt_tokens", "completion_tokens",
    "slo_requests", "slo_violations", "slo_compliance_rate", "total_cost",
)  # fmt: skip


def _instance(gw: Gateway, instance_id: str) -> dict[str, Any]:
    live = gw.cp.get_instance_metrics(instance_id)
    inst = gw.cp.core.instance(instance_id)
    out = {k: live[k] for k in _INSTANCE_FIELDS if k in live}
    out.update(
        gpu_type=inst.gpu_type,
        gpu_count=inst.gpu_count,
        tensor_parallel_size=inst.tensor_parallel_size,
        pipeline_parallel_size=inst.pipeline_parallel_size,
        data_parallel_size=inst.data_parallel_size,
        simulated=instance_id in gw.fleet,
    )
    return out


def status_view(gw: Gateway) -> dict[str, Any]:
    """What ``/status`` answers (every value derived from live state, nothing secret)."""
    status = gw.cp.get_status()
    metrics = gw.cp.get_metrics()
    instances = [_instance(gw, i.instance_id) for i in gw.cp.get_instances()]
    return {
        "fleet": {
            "total_instances": status.get("total_instances", len(instances)),
            "healthy_instances": sum(1 for i in instances if i["is_healthy"]),
            "available_instances": status.get("available_instances"),
            "models": gw.model_names(),
        },
        "policy": {
            "scheduling_policy": status.get("scheduling_policy"),
            "active_policy": status.get("active_policy"),
            "policy_reason": status.get("policy_reason") or "",
            "routing_strategy": status.get("routing_strategy"),
        },
        "queue": {
            "pending_requests": status.get("pending_requests", 0),
            "running_requests": status.get("running_requests", 0),
            "depth_by_priority": status.get("queue_depth_by_priority") or {},
        },
        "counters": status.get("counters") or {},
        "metrics": {k: getattr(metrics, k) for k in _METRIC_FIELDS},
        "instances": instances,
        "gateway": {
            "accepting": gw.accepting,
            "in_flight": gw.in_flight,
            "uptime_s": round(time.time() - gw.started_at, 3),
            "admin_api": gw.auth.admin_enabled,
            "api_keys_required": gw.auth.keys_required,
        },
    }


async def public_status(request: web.Request) -> web.Response:
    gw: Gateway = request.app[GATEWAY_KEY]
    gw.auth.check_status(request.headers)
    body = orjson.dumps(status_view(gw), option=orjson.OPT_NON_STR_KEYS, default=str)
    return web.Response(body=body, content_type="application/json",
                        headers={"Cache-Control": "no-store"})  # fmt: skip

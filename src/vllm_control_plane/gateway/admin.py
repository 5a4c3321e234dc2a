"""The admin API under ``/admin``: instances, policy and strategy, status, metrics, requests.

Every route requires ``Authorization: Bearer <admin token>`` (constant-time compare; refused when
no token is configured). Bodies are small and rare, so they are validated with the same pydantic
models as the config file: a bad body is a 400 naming the key, never a 500.

Request ids are per tenant (see ``parsing.py``): a tenant's request is addressed by the id its
client sent plus ``?tenant=<name>``. Without ``tenant`` the id is taken as the control plane's
own: the client's id on a gateway without tenants, else the scoped ``<tenant>/<id>``
(URL-encoded: ``acme%2Fabc``).

    GET    /admin/instances                 list with live figures
    POST   /admin/instances                 register a real instance (InstanceConfig)
    POST   /admin/simulated                 start and register a simulated one
    DELETE /admin/instances/{id}            unregister (running requests finish first)
    POST   /admin/instances/{id}/drain      stop dispatching to it, keep it registered
    POST   /admin/instances/{id}/resume     undo drain
    GET    /admin/policy                    policy and strategy, with the valid names
    PUT    /admin/policy                    switch either or both live
    GET    /admin/status                    queue, counters, policy, gateway state
    GET    /admin/metrics                   aggregate latency / SLO / cost figures as JSON
    GET    /admin/requests/{id}             one request's status and timings (?tenant=name)
    POST   /admin/requests/{id}/cancel      cancel it (aborted on its engine) (?tenant=name)
    POST   /admin/reload                    re-read the config file and apply it
    GET    /admin/config                    the running config (secrets masked)
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, ValidationError

from vllm_control_plane.config import InstanceConfig, SimulatedInstanceConfig
from vllm_control_plane.gateway.errors import GatewayError, bad_request
from vllm_control_plane.gateway.openai_routes import GATEWAY_KEY
from vllm_control_plane.gateway.parsing import scoped_request_id
from vllm_control_plane.gateway.service import Gateway

M = TypeVar("M", bound=BaseModel)


class PolicyUpdate(BaseModel):
    """Body of ``PUT /admin/policy``: either field or both."""

    model_config = ConfigDict(extra="forbid")

    scheduling_policy: str | None = None
    routing_strategy: str | None = None


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS, default=str),
        content_type="application/json",
    )


def _gw(request: web.Request) -> Gateway:
    gw = request.app[GATEWAY_KEY]
    gw.auth.check_admin(request.headers)
    return gw


async def _body(request: web.Request, model: type[M]) -> M:
    raw = await request.read()
    try:
        data = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError as e:
        raise bad_request(f"Request body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise bad_request("Request body must be a JSON object.", code="invalid_json")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'body'}: "
            f"{'unknown key' if err['type'] == 'extra_forbidden' else err['msg']}"
            for err in e.errors()
        )
        raise bad_request(f"Invalid body: {problems}") from None


def _instance_or_404(gw: Gateway, instance_id: str) -> None:
    try:
        gw.cp.core.instance(instance_id)
    except KeyError:
        raise GatewayError(404, f"No instance {instance_id!r}.", "instance_not_found") from None


# ---------------------------------------------------------------- instances


def _describe(gw: Gateway, inst_id: str) -> dict[str, Any]:
    inst = gw.cp.core.instance(inst_id)
    out = gw.cp.get_instance_metrics(inst_id)
    out.update(
        url=inst.base_url,
        served_model_name=inst.api_model_name,
        tensor_parallel_size=inst.tensor_parallel_size,
        pipeline_parallel_size=inst.pipeline_parallel_size,
        data_parallel_size=inst.data_parallel_size,
        gpu_type=inst.gpu_type,
        gpu_count=inst.gpu_count,
        simulated=inst_id in gw.fleet,
    )
    return out


async def list_instances(request: web.Request) -> web.Response:
    gw = _gw(request)
    return _json({"instances": [_describe(gw, i.instance_id) for i in gw.cp.get_instances()]})


async def register_instance(request: web.Request) -> web.Response:
    gw = _gw(request)
    cfg = await _body(request, InstanceConfig)
    inst = await gw.add_instance(cfg)
    return _json(_describe(gw, inst.instance_id), status=201)


async def register_simulated(request: web.Request) -> web.Response:
    gw = _gw(request)
    cfg = await _body(request, SimulatedInstanceConfig)
    inst = await gw.add_instance(cfg)
    return _json(_describe(gw, inst.instance_id), status=201)


async def unregister_instance(request: web.Request) -> web.Response:
    gw = _gw(request)
    iid = request.match_info["instance_id"]
    _instance_or_404(gw, iid)
    running = gw.remove_instance(iid)
    return _json({"instance_id": iid, "unregistered": True, "draining_requests": running}, 202)


async def drain_instance(request: web.Request) -> web.Response:
    gw = _gw(request)
    iid = request.match_info["instance_id"]
    _instance_or_404(gw, iid)
    running = gw.cp.drain_instance(iid)
    return _json({"instance_id": iid, "draining": True, "running_requests": running})


async def resume_instance(request: web.Request) -> web.Response:
    gw = _gw(request)
    iid = request.match_info["instance_id"]
    _instance_or_404(gw, iid)
    gw.cp.resume_instance(iid)
    return _json({"instance_id": iid, "draining": False})


# ---------------------------------------------------------------- policy, status, metrics


def _policy_view(gw: Gateway) -> dict[str, Any]:
    from vllm_control_plane.core.policies import POLICIES
    from vllm_control_plane.core.routing import STRATEGIES

    status = gw.cp.get_status()
    return {
        "scheduling_policy": gw.cp.core.policy_name,
        "active_policy": status.get("active_policy"),
        "policy_reason": status.get("policy_reason"),
        "routing_strategy": gw.cp.router.routing_strategy,
        "available_policies": list(POLICIES),
        "available_strategies": list(STRATEGIES),
    }


async def get_policy(request: web.Request) -> web.Response:
    return _json(_policy_view(_gw(request)))


async def set_policy(request: web.Request) -> web.Response:
    gw = _gw(request)
    update = await _body(request, PolicyUpdate)
    try:
        if update.scheduling_policy is not None:
            gw.cp.update_policy(update.scheduling_policy)
        if update.routing_strategy is not None:
            gw.cp.router.routing_strategy = update.routing_strategy
    except ValueError as e:
        raise bad_request(str(e)) from None
    return _json(_policy_view(gw))


async def status(request: web.Request) -> web.Response:
    gw = _gw(request)
    out = dict(gw.cp.get_status())
    out["gateway"] = {
        "accepting": gw.accepting,
        "in_flight": gw.in_flight,
        "uptime_s": round(time.time() - gw.started_at, 3),
        "config_path": str(gw.config_path) if gw.config_path else None,
        "simulated_instances": len(gw.fleet),
        "api_keys_required": gw.auth.keys_required,
        "tenant_limits": gw.auth.limits_snapshot(),
    }
    return _json(out)


async def metrics(request: web.Request) -> web.Response:
    gw = _gw(request)
    return _json(dataclasses.asdict(gw.cp.get_metrics()))


# ---------------------------------------------------------------- requests, reload, config


def _request_id(request: web.Request) -> str:
    """The control plane's id of ``{request_id}`` (scoped by ``?tenant=`` when given)."""
    tenant = request.query.get("tenant")
    return scoped_request_id(tenant or None, request.match_info["request_id"])


def _request_view(gw: Gateway, request_id: str) -> dict[str, Any]:
    try:
        rec = gw.cp.core.record(request_id)
    except KeyError:
        raise GatewayError(404, f"No request {request_id!r} (never submitted, or evicted).",
                           "request_not_found") from None  # fmt: skip
    queue_ms = None
    if rec.scheduled_at is not None:
        queue_ms = (rec.scheduled_at - rec.submitted_at) * 1e3
    tenant = rec.request.tenant
    return {
        "request_id": request_id,
        "tenant": tenant,
        "client_request_id": request_id.removeprefix(f"{tenant}/") if tenant else request_id,
        "status": rec.status.value,
        "reason": rec.reason,
        "model": rec.model_name,
        "priority": rec.request.priority.name.lower(),
        "instance_id": rec.instance_id,
        "queue_time_ms": queue_ms,
        "ttft_ms": rec.ttft_ms,
        "tpot_ms": rec.tpot_ms,
        "latency_ms": rec.e2e_ms,
        "prompt_tokens": rec.prompt_tokens,
        "completion_tokens": rec.completion_tokens,
        "cost_usd": rec.cost_usd,
        "retries": rec.retries,
        "slo_met": rec.met_slo(),
    }


async def get_request(request: web.Request) -> web.Response:
    gw = _gw(request)
    return _json(_request_view(gw, _request_id(request)))


async def cancel_request(request: web.Request) -> web.Response:
    gw = _gw(request)
    rid = _request_id(request)
    _request_view(gw, rid)  # 404 when unknown
    cancelled = await gw.cp.cancel_request(rid)
    return _json({"cancelled": cancelled, **_request_view(gw, rid)})


async def reload(request: web.Request) -> web.Response:
    from vllm_control_plane.config import ConfigError

    gw = _gw(request)
    try:
        report = await gw.reload()
    except ConfigError as e:
        raise bad_request(str(e), code="invalid_config") from None
    return _json({"reloaded": True, **report})


async def show_config(request: web.Request) -> web.Response:
    gw = _gw(request)
    return _json(gw.config.model_dump(mode="json"))


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/admin/instances", list_instances)
    r.add_post("/admin/instances", register_instance)
    r.add_post("/admin/simulated", register_simulated)
    r.add_delete("/admin/instances/{instance_id}", unregister_instance)
    r.add_post("/admin/instances/{instance_id}/drain", drain_instance)
    r.add_post("/admin/instances/{instance_id}/resume", resume_instance)
    r.add_get("/admin/policy", get_policy)
    r.add_put("/admin/policy", set_policy)
    r.add_get("/admin/status", status)
    r.add_get("/admin/metrics", metrics)
    r.add_get("/admin/requests/{request_id}", get_request)
    r.add_post("/admin/requests/{request_id}/cancel", cancel_request)
    r.add_post("/admin/reload", reload)
    r.add_get("/admin/config", show_config)

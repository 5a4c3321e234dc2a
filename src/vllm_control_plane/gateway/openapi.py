"""The OpenAPI 3.1 document served at ``/openapi.json``.

Schemas are generated from pydantic models: the config models for admin bodies (the same ones
that validate ``cluster.yaml``) and small descriptive models of the OpenAI request and error
shapes. The models here document the wire format only; the hot path validates by hand
(``parsing.py``). Paths are written out below, one entry per route in ``app.py`` / ``admin.py``.
"""

from __future__ import annotations

import functools
from typing import Annotated, Any, Literal, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from vllm_control_plane import __version__
from vllm_control_plane.config import InstanceConfig, SimulatedInstanceConfig
from vllm_control_plane.gateway.admin import PolicyUpdate


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ChatMessage(_Open):
    role: str
    content: str | list[dict[str, Any]] | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


_TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]
_T = TypeVar("_T")
_One = Annotated[list[_T], Field(min_length=1, max_length=1)]  # a batch of one prompt


class _Sampling(_Open):
    model: str | None = Field(None, description="A model from /v1/models (default: the first).")
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    n: Literal[1] | None = None
    stop: str | list[str] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = Field(None, description="Only with stream: true.")
    user: str | None = None
    ignore_eos: bool | None = None


class ChatCompletionRequest(_Sampling):
    """OpenAI chat request; unknown fields are passed to the engine unchanged."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class CompletionRequest(_Sampling):
    """OpenAI completions request; unknown fields are passed to the engine unchanged."""

    prompt: str | _One[str] | _TokenIds | _One[_TokenIds] = Field(
        description='Text or token ids, alone or as a batch of one (`["..."]`, `[[1, 2]]`); '
        "batches of several prompts are refused (one request is one generation)."
    )


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorBody


_MODELS: list[type[BaseModel]] = [
    ChatCompletionRequest,
    CompletionRequest,
    ErrorResponse,
    InstanceConfig,
    SimulatedInstanceConfig,
    PolicyUpdate,
]

# What parsing.py accepts: a non-positive deadline or objective is a 400 (``_positive``), so the
# schema says so; a positive one, however small, is valid (a hard deadline that cannot be met is
# the documented 504, not a bad parameter).
_POSITIVE = {"type": "number", "exclusiveMinimum": 0}

_METADATA_HEADERS = [
    ("X-Request-Id", "Request id, unique per tenant among live and completed requests "
     "(echoed back; generated when absent). The id of a request that did not complete may "
     "be sent again.", {"type": "string"}),
    ("X-User-Id", "User id (else the body's `user`).", {"type": "string"}),
    ("X-Session-Id", "Session key for sticky routing.", {"type": "string"}),
    ("X-Priority", "critical, high, normal, low or background.",
     {"type": "string", "enum": ["critical", "high", "normal", "low", "background"]}),
    ("X-SLO-Deadline-Ms", "End-to-end deadline from submission (ms, > 0; else 400). A hard "
     "deadline too short to meet ends in 504.", _POSITIVE),
    ("X-Hard-Deadline", "true: end the request with 504 when X-SLO-Deadline-Ms passes.",
     {"type": "string", "enum": ["true", "false"]}),
    ("X-TTFT-SLO-Ms", "Time-to-first-token objective (ms, > 0; else 400).", _POSITIVE),
    ("X-TPOT-SLO-Ms", "Time-per-output-token objective (ms, > 0; else 400).", _POSITIVE),
    ("X-Cost-Budget", "Largest acceptable cost in USD (>= 0; else 400).",
     {"type": "number", "minimum": 0}),
    ("X-Parallelism-Hint", "tp, pp, dp, ep or hybrid.",
     {"type": "string", "enum": ["tp", "pp", "dp", "ep", "hybrid"]}),
]  # fmt: skip

_ERRORS = {
    "400": "Bad parameters",
    "401": "Missing or invalid API key / admin token",
    "404": "Unknown model / instance / request",
    "409": "X-Request-Id of a live or completed request of the same tenant",
    "413": "Body too large",
    "429": "Queue full, or the tenant's rate / concurrency limit (see Retry-After)",
    "502": "The engine failed the request (after retries): `engine_error`",
    "503": "No healthy instance (see Retry-After), request cancelled, or shutting down: "
    "`no_healthy_instance`, `request_cancelled`, `shutting_down`",
    "504": "A hard deadline passed or cannot be met: `deadline_exceeded`, `deadline_infeasible`",
}


_GENERATION_ERRORS = ("400", "401", "404", "409", "413", "429", "502", "503", "504")


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _errors(*codes: str) -> dict[str, Any]:
    content = {"application/json": {"schema": _ref("ErrorResponse")}}
    return {c: {"description": _ERRORS.get(c, "Error"), "content": content} for c in codes}


def _json_ok(description: str, status: str = "200") -> dict[str, Any]:
    return {status: {"description": description, "content": {"application/json": {}}}}


def _generation(summary: str, schema: str) -> dict[str, Any]:
    params = [
        {"name": n, "in": "header", "required": False, "description": d, "schema": s}
        for n, d, s in _METADATA_HEADERS
    ]
    ok = {
        "200": {
            "description": "JSON completion, or an SSE stream when `stream` is true.",
            "headers": {
                "X-Request-Id": {"schema": {"type": "string"}},
                "X-Instance-Id": {"schema": {"type": "string"}},
                "X-Queue-Time-Ms": {"schema": {"type": "string"}},
            },
            "content": {"application/json": {}, "text/event-stream": {}},
        }
    }
    return {
        "post": {
            "summary": summary,
            "tags": ["openai"],
            "security": [{}, {"apiKey": []}],
            "parameters": params,
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _ref(schema)}},
            },
            "responses": {**ok, **_errors(*_GENERATION_ERRORS)},
        }
    }


def _admin(method: str, summary: str, body: str | None = None, ok: str = "200",
           param: str | None = None) -> dict[str, Any]:  # fmt: skip
    op: dict[str, Any] = {
        "summary": summary,
        "tags": ["admin"],
        "security": [{"adminToken": []}],
        "responses": {**_json_ok("OK", ok), **_errors("400", "401", "404")},
    }
    if body is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(body)}},
        }
    if param is not None:
        op["parameters"] = [
            {"name": param, "in": "path", "required": True, "schema": {"type": "string"}}
        ]
    if param == "request_id":  # ids are per tenant
        op["parameters"].append({"name": "tenant", "in": "query", "required": False,
                                 "description": "The tenant whose request id this is.",
                                 "schema": {"type": "string"}})  # fmt: skip
    return {method: op}


def _paths() -> dict[str, Any]:
    plain = {"get": {"tags": ["ops"], "responses": _json_ok("OK")}}
    return {
        "/v1/chat/completions": _generation("Chat completion", "ChatCompletionRequest"),
        "/v1/completions": _generation("Text completion", "CompletionRequest"),
        "/v1/models": {"get": {"tags": ["openai"], "summary": "Models the fleet serves",
                               "security": [{}, {"apiKey": []}],
                               "responses": {**_json_ok("Model list"), **_errors("401")}}},
        "/health": {"get": {**plain["get"], "summary": "Liveness"}},
        "/ready": {"get": {"tags": ["ops"], "summary": "Readiness", "responses": {
            **_json_ok("Ready"), "503": {"description": "Not ready"}}}},
        "/status": {"get": {"tags": ["ops"], "summary": "Read-only fleet and request figures "
                            "(the dashboard's data; the admin token when one is configured)",
                            "security": [{}, {"adminToken": []}],
                            "responses": {**_json_ok("Status"), **_errors("401")}}},
        "/metrics": {"get": {"tags": ["ops"], "summary": "Prometheus metrics",
                             "security": [{}, {"adminToken": []}, {"metricsToken": []}],
                             "responses": {"200": {"description": "Prometheus text format",
                                                   "content": {"text/plain": {}}},
                                           **_errors("401")}}},
        "/admin/instances": {
            **_admin("get", "List instances with live figures"),
            **_admin("post", "Register a real instance", "InstanceConfig", "201"),
        },
        "/admin/simulated": _admin("post", "Start and register a simulated instance",
                                   "SimulatedInstanceConfig", "201"),
        "/admin/instances/{instance_id}": _admin("delete", "Unregister (drains first)", ok="202",
                                                 param="instance_id"),
        "/admin/instances/{instance_id}/drain": _admin("post", "Stop dispatching to it",
                                                       param="instance_id"),
        "/admin/instances/{instance_id}/resume": _admin("post", "Undo drain", param="instance_id"),
        "/admin/policy": {
            **_admin("get", "Scheduling policy and routing strategy"),
            **_admin("put", "Switch policy and/or strategy live", "PolicyUpdate"),
        },
        "/admin/status": _admin("get", "Queue, counters, policy, gateway state"),
        "/admin/metrics": _admin("get", "Aggregate metrics as JSON"),
        "/admin/requests/{request_id}": _admin("get", "One request's status", param="request_id"),
        "/admin/requests/{request_id}/cancel": _admin("post", "Cancel a request",
                                                      param="request_id"),
        "/admin/reload": _admin("post", "Reload the config file"),
        "/admin/config": _admin("get", "The running config (secrets masked)"),
    }  # fmt: skip


@functools.lru_cache(maxsize=1)
def openapi_document() -> dict[str, Any]:
    """The whole OpenAPI document (built once)."""
    _, defs = models_json_schema(
        [(m, "validation") for m in _MODELS], ref_template="#/components/schemas/{model}"
    )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "vLLM control plane gateway",
            "version": __version__,
            "description": "OpenAI-compatible API over a fleet of vLLM servers, plus admin API.",
        },
        "paths": _paths(),
        "components": {
            "schemas": defs.get("$defs", {}),
            "securitySchemes": {
                "apiKey": {"type": "http", "scheme": "bearer"},
                "adminToken": {"type": "http", "scheme": "bearer"},
                "metricsToken": {"type": "http", "scheme": "bearer"},
            },
        },
    }


@functools.lru_cache(maxsize=1)
def openapi_json() -> bytes:
    return orjson.dumps(openapi_document())

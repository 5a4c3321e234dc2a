"""Client request → :class:`RequestMetadata`: body fields and ``X-*`` headers, checked by hand.

This runs for every request, so it avoids pydantic: it checks only the fields the control plane
reads (model, messages / prompt, ``max_tokens``, ``n``, ``stream``, ``stream_options``, ``user``)
and the metadata headers, each failing with a clear 400 naming the parameter. A completions
``prompt`` is text or token ids, as vLLM takes it; token ids are counted exactly (no tokenizer)
and reach the engine as the body's ``prompt`` through ``extra_body``, the backend's channel for
an explicit engine prompt. Everything else in
the body is passed to the engine untouched (``extra_body``), where vLLM validates it and its 400
comes back to the client verbatim.

Headers read: ``X-Request-Id`` (echoed back; generated when absent), ``X-User-Id`` (or the body's
``user``), ``X-Session-Id``, ``X-Priority`` (critical/high/normal/low/background or 0–4),
``X-SLO-Deadline-Ms``, ``X-Hard-Deadline`` (true/false), ``X-TTFT-SLO-Ms``, ``X-TPOT-SLO-Ms``,
``X-Cost-Budget`` (USD), ``X-Parallelism-Hint`` (tp/pp/dp/ep/hybrid).

Request ids are per tenant: a tenant's ``X-Request-Id`` ``abc`` is ``<tenant>/abc`` inside the
control plane (tenant names cannot hold ``/``, so two tenants' ids never meet), and the client
sees ``abc`` back. Without tenants ids are used as sent. The tenant itself comes from the API key
only; ``X-User-Id`` and ``user`` are just labels for routing affinity and the engine.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from vllm_control_plane.gateway.errors import GatewayError, bad_request
from vllm_control_plane.types import ParallelismType, RequestMetadata, RequestPriority

# Body keys the gateway consumes itself; the rest goes to the engine as ``extra_body``.
_CONSUMED = frozenset({"model", "messages", "prompt", "stream", "stream_options"})
_MAX_ID_LEN = 256
_PROMPT_SHAPE = "`prompt` must be a string or a non-empty list of token ids (integers >= 0)."


@dataclass(frozen=True, slots=True)
class TenantPolicy:
    """What a tenant's requests may ask for (from ``TenantConfig``)."""

    name: str
    default_priority: RequestPriority = RequestPriority.NORMAL
    max_priority: RequestPriority = RequestPriority.CRITICAL
    cost_budget: float | None = None


@dataclass(slots=True)
class ClientRequest:
    """A parsed client request: the metadata for the control plane plus response options."""

    meta: RequestMetadata
    chat: bool
    stream: bool
    include_usage: bool
    model: str | None  # as the client named it (None: the fleet's default)
    client_id: str = ""  # the request id as the client knows it (echoed in X-Request-Id)
    hard_deadline: bool | None = None  # X-Hard-Deadline (None: the config's default)
    prompt_token_ids: list[int] | None = None  # a completions prompt given as token ids


def load_body(raw: bytes) -> dict[str, Any]:
    """The JSON object of a request body, or a 400."""
    if not raw:
        raise bad_request("Request body is empty; expected a JSON object.", code="invalid_json")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise bad_request(f"Request body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise bad_request("Request body must be a JSON object.", code="invalid_json")
    return body


def parse_request(
    body: dict[str, Any],
    headers: Mapping[str, str],
    chat: bool,
    tenant: TenantPolicy | None = None,
) -> ClientRequest:
    """Validate what the control plane needs and build the request's metadata (or raise 400)."""
    model = _opt_str(body, "model")
    stream = _opt_bool(body, "stream", False)
    include_usage = _include_usage(body, stream)
    _check_n(body)
    max_tokens = _max_tokens(body)
    extra = {k: v for k, v in body.items() if k not in _CONSUMED}
    messages, prompt = (_messages(body), None) if chat else (None, _prompt(body))
    token_ids = prompt if isinstance(prompt, list) else None
    if token_ids is not None:
        extra["prompt"] = token_ids  # the engine gets the ids as they are
    priority = _priority(headers, tenant)
    client_id = request_id_from(headers)
    deadline_ms = _positive(headers, "X-SLO-Deadline-Ms")
    hard = _hard_deadline(headers, deadline_ms)
    meta = RequestMetadata(
        request_id=scoped_request_id(tenant, client_id),
        user_id=headers.get("X-User-Id") or _opt_str(body, "user"),
        priority=priority,
        slo_deadline_ms=deadline_ms,
        ttft_slo_ms=_positive(headers, "X-TTFT-SLO-Ms"),
        tpot_slo_ms=_positive(headers, "X-TPOT-SLO-Ms"),
        cost_budget=_budget(headers, tenant),
        parallelism_hint=_hint(headers),
        max_tokens=max_tokens,
        model_name=model,
        messages=messages,
        prompt=prompt if isinstance(prompt, str) else None,
        prompt_tokens=len(token_ids) if token_ids is not None else None,
        stream=stream,
        session_id=headers.get("X-Session-Id") or None,
        tenant=tenant.name if tenant is not None else None,
        ignore_eos=extra.pop("ignore_eos", False) is True,
        extra_body=extra,
    )
    return ClientRequest(meta, chat, stream, include_usage, model, client_id, hard, token_ids)


def request_id_from(headers: Mapping[str, str]) -> str:
    """The client's ``X-Request-Id`` (checked), or a fresh random id."""
    rid = headers.get("X-Request-Id")
    if rid is None:
        return os.urandom(12).hex()
    if not rid or len(rid) > _MAX_ID_LEN or not rid.isprintable():
        raise bad_request(
            f"X-Request-Id must be 1-{_MAX_ID_LEN} printable characters.", "X-Request-Id"
        )
    return rid


def scoped_request_id(tenant: TenantPolicy | str | None, client_id: str) -> str:
    """The control plane's id of a tenant's request: ``<tenant>/<client id>`` (as is without a
    tenant). Injective, because tenant names cannot contain ``/``."""
    if tenant is None:
        return client_id
    name = tenant if isinstance(tenant, str) else tenant.name
    return f"{name}/{client_id}"


# ---------------------------------------------------------------- body fields


def _opt_str(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise bad_request(f"`{key}` must be a string.", key)
    return value


def _opt_bool(body: dict[str, Any], key: str, default: bool) -> bool:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise bad_request(f"`{key}` must be a boolean.", key)
    return value


def _include_usage(body: dict[str, Any], stream: bool) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict):
        raise bad_request("`stream_options` must be an object.", "stream_options")
    if not stream:
        raise bad_request("`stream_options` is only allowed when `stream` is true.", "stream")
    usage = options.get("include_usage", False)
    if not isinstance(usage, bool):
        raise bad_request("`stream_options.include_usage` must be a boolean.", "stream_options")
    return usage


def _check_n(body: dict[str, Any]) -> None:
    n = body.get("n")
    if n is not None and (type(n) is not int or n != 1):
        raise bad_request("Only `n` = 1 is supported by the gateway.", "n")


def _max_tokens(body: dict[str, Any]) -> int | None:
    found = None
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if value is None:
            continue
        if type(value) is not int or value < 1:
            raise bad_request(f"`{key}` must be an integer >= 1, got {value!r}.", key)
        found = value if found is None else found
    return found


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("`messages` must be a non-empty list of messages.", "messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise bad_request(
                f"`messages[{i}]` must be an object with a string `role`.", "messages"
            )
        content = m.get("content")
        if content is not None and not isinstance(content, str | list):
            raise bad_request(
                f"`messages[{i}].content` must be a string or a list of parts.", "messages"
            )
    return messages


def _prompt(body: dict[str, Any]) -> str | list[int]:
    """A completions prompt: text or token ids, alone or as a batch of one (``["..."]``,
    ``[[1, 2, 3]]``). Batches of several are refused: one control-plane request is one generation,
    scheduled, routed and counted on its own."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return prompt
    if prompt is None:
        raise bad_request("`prompt` is required.", "prompt")
    if not isinstance(prompt, list) or not prompt:
        raise bad_request(_PROMPT_SHAPE, "prompt")
    if all(type(t) is int and t >= 0 for t in prompt):
        return prompt
    if len(prompt) > 1 and all(isinstance(p, str | list) for p in prompt):
        raise bad_request("Batched prompts (several prompts in one request) are not supported: "
                          "send one request per prompt.", "prompt")  # fmt: skip
    raise bad_request(_PROMPT_SHAPE, "prompt")


# ---------------------------------------------------------------- headers


def _priority(headers: Mapping[str, str], tenant: TenantPolicy | None) -> RequestPriority:
    raw = headers.get("X-Priority")
    if raw is None:
        return tenant.default_priority if tenant else RequestPriority.NORMAL
    try:
        prio = RequestPriority.parse(int(raw) if raw.strip().isdigit() else raw)
    except ValueError:
        valid = ", ".join(p.name.lower() for p in RequestPriority)
        raise bad_request(
            f"X-Priority must be one of {valid}, got {raw!r}.", "X-Priority"
        ) from None
    if tenant is not None and prio < tenant.max_priority:
        return tenant.max_priority  # a tenant cannot ask for more urgency than it was granted
    return prio


def _number(headers: Mapping[str, str], name: str) -> float | None:
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise bad_request(f"{name} must be a number, got {raw!r}.", name) from None
    if not math.isfinite(value):
        raise bad_request(f"{name} must be finite, got {raw!r}.", name)
    return value


def _positive(headers: Mapping[str, str], name: str) -> float | None:
    value = _number(headers, name)
    if value is not None and value <= 0:
        raise bad_request(f"{name} must be > 0, got {value:g}.", name)
    return value


def _budget(headers: Mapping[str, str], tenant: TenantPolicy | None) -> float | None:
    value = _number(headers, "X-Cost-Budget")
    if value is not None and value < 0:
        raise bad_request(f"X-Cost-Budget must be >= 0, got {value:g}.", "X-Cost-Budget")
    cap = tenant.cost_budget if tenant else None
    if cap is None:
        return value
    return cap if value is None else min(value, cap)


_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})


def _hard_deadline(headers: Mapping[str, str], deadline_ms: float | None) -> bool | None:
    """``X-Hard-Deadline``: end the request with 504 when ``X-SLO-Deadline-Ms`` passes."""
    raw = headers.get("X-Hard-Deadline")
    if raw is None:
        return None
    value = raw.strip().lower()
    if value in _FALSE:
        return False
    if value not in _TRUE:
        raise bad_request(f"X-Hard-Deadline must be true or false, got {raw!r}.",
                          "X-Hard-Deadline")  # fmt: skip
    if deadline_ms is None:
        raise bad_request("X-Hard-Deadline needs X-SLO-Deadline-Ms (the deadline to enforce).",
                          "X-Hard-Deadline")  # fmt: skip
    return True


def _hint(headers: Mapping[str, str]) -> ParallelismType | None:
    raw = headers.get("X-Parallelism-Hint")
    if raw is None:
        return None
    try:
        return ParallelismType(raw.strip().lower())
    except ValueError:
        raise GatewayError(
            400, f"X-Parallelism-Hint must be one of tp, pp, dp, ep, hybrid, got {raw!r}.",
            "invalid_value", "X-Parallelism-Hint",
        ) from None  # fmt: skip

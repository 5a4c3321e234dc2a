"""vLLM's OpenAI API on the wire: request parsing/validation and response shapes (vLLM 0.10.1).

How it works: request bodies are checked by hand rather than with pydantic models, because this
runs for every request and the simulator must keep up with many streams on one core. The checks
and their order follow vLLM: body type errors first (400, type ``Bad Request``, as vLLM's
``RequestValidationError`` handler answers), then the model (404 ``NotFoundError``), then the
context window (400 ``BadRequestError`` with vLLM's exact wording), then sampling parameters
(400 ``BadRequestError`` with ``SamplingParams``' wording). Parsing has no side effects: a request
that fails here never reaches the engine.

Responses are built as dicts in vLLM's field order (or, for streaming chunks, as byte templates
filled per chunk) and serialised compactly with orjson, matching FastAPI's ``JSONResponse`` and
pydantic's ``model_dump_json``. Error frames inside a stream use ``json.dumps`` defaults (with
spaces), as vLLM does.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from vllm_control_plane import tokenizer

VLLM_VERSION = "0.10.1.1"
_UNSET: Any = object()

__all__ = [
    "VLLM_VERSION",
    "ApiError",
    "ChunkWriter",
    "GenerateRequest",
    "chat_response",
    "completion_response",
    "models_response",
    "parse_generate",
    "parse_tokenize",
    "stream_error_frame",
]


class ApiError(Exception):
    """An error answer in vLLM's envelope: ``{"error": {message, type, param, code}}``."""

    def __init__(
        self,
        message: str,
        status: int = 400,
        err_type: str = "BadRequestError",
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.err_type = err_type
        self.param = param

    def envelope(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.err_type,
                "param": self.param,
                "code": self.status,
            }
        }

    def body(self) -> bytes:
        return orjson.dumps(self.envelope())


def _invalid(kind: str, loc: str, msg: str, value: Any) -> ApiError:
    """A body-validation error worded like FastAPI's ``RequestValidationError`` string."""
    detail = f"[{{'type': '{kind}', 'loc': ('body', '{loc}'), 'msg': '{msg}', 'input': {value!r}}}]"
    return ApiError(detail, 400, "Bad Request")


def bad_json(error: str) -> ApiError:
    """Malformed JSON body (400, like FastAPI's ``json_invalid`` validation error)."""
    return ApiError(
        "[{'type': 'json_invalid', 'loc': ('body', 0), 'msg': 'JSON decode error', "
        f"'input': {{}}, 'ctx': {{'error': {error!r}}}}}]",
        400,
        "Bad Request",
    )


# ---------------------------------------------------------------- typed field access


def _int(body: Mapping[str, Any], key: str, default: Any = None) -> Any:
    v = body.get(key, default)
    if v is None or v is default:
        return v
    if isinstance(v, bool) or not isinstance(v, int | float) or v != int(v):
        raise _invalid("int_parsing", key, "Input should be a valid integer", v)
    return int(v)


def _float(body: Mapping[str, Any], key: str) -> float | None:
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise _invalid("float_parsing", key, "Input should be a valid number", v)
    return float(v)


def _bool(body: Mapping[str, Any], key: str, default: bool = False) -> bool:
    v = body.get(key, default)
    if v is None:
        return default
    if not isinstance(v, bool) and v not in (0, 1):
        raise _invalid("bool_parsing", key, "Input should be a valid boolean", v)
    return bool(v)


def _str(body: Mapping[str, Any], key: str) -> str | None:
    v = body.get(key)
    if v is not None and not isinstance(v, str):
        raise _invalid("string_type", key, "Input should be a valid string", v)
    return v


# ---------------------------------------------------------------- generation requests


@dataclass(slots=True)
class GenerateRequest:
    """A validated completion or chat request, ready to become an ``EngineRequest``."""

    chat: bool
    request_id: str  # engine id: the X-Request-Id header, the body's request_id, or a uuid
    public_id: str  # "cmpl-…" / "chatcmpl-…"
    model: str
    prompt_ids: list[int]
    max_tokens: int
    stream: bool
    include_usage: bool
    continuous_usage: bool
    ignore_eos: bool
    min_tokens: int
    seed: int | None
    created: int


def parse_generate(
    body: Any,
    *,
    chat: bool,
    served_model: str,
    max_model_len: int,
    header_request_id: str | None = None,
) -> GenerateRequest:
    """Validate a completions or chat body; raises :class:`ApiError` (vLLM's status and text)."""
    if not isinstance(body, dict):
        raise _invalid("model_attributes_type", "", "Input should be a valid dictionary", body)
    stream, include_usage, continuous = _stream_options(body)
    _check_unsupported(body)
    model = _check_model(body, served_model)
    prompt_ids = _chat_prompt(body) if chat else _completion_prompt(body)
    requested = _requested_max_tokens(body, chat)
    _check_context(len(prompt_ids), requested, max_model_len)
    max_tokens = _resolve_max_tokens(requested, max_model_len - len(prompt_ids))
    min_tokens = _check_sampling(body, max_tokens)
    seed = _int(body, "seed")
    _str(body, "user")
    base = header_request_id or _str(body, "request_id") or uuid.uuid4().hex
    return GenerateRequest(
        chat=chat,
        request_id=base,
        public_id=("chatcmpl-" if chat else "cmpl-") + base,
        model=model,
        prompt_ids=prompt_ids,
        max_tokens=max_tokens,
        stream=stream,
        include_usage=include_usage,
        continuous_usage=continuous,
        ignore_eos=_bool(body, "ignore_eos"),
        min_tokens=min_tokens,
        seed=seed,
        created=int(time.time()),
    )


def _stream_options(body: Mapping[str, Any]) -> tuple[bool, bool, bool]:
    stream = _bool(body, "stream")
    opts = body.get("stream_options")
    if opts is None:
        return stream, False, False
    if not isinstance(opts, dict):
        raise _invalid("model_type", "stream_options", "Input should be an object", opts)
    if opts and not stream:
        raise ApiError("Stream options can only be defined when `stream=True`.", 400, "Bad Request")
    include = _bool(opts, "include_usage", True)
    return stream, include, include and _bool(opts, "continuous_usage_stats")


def _check_unsupported(body: Mapping[str, Any]) -> None:
    """Features the simulator cannot fake faithfully are refused, never silently ignored."""
    n = _int(body, "n", 1)
    if n is not None and n < 1:
        raise ApiError(f"n must be at least 1, got {n}.")
    if n is not None and n > 1:
        raise ApiError(f"n > 1 is not supported by the simulator (got n={n}); use n=1.")
    for key in ("logprobs", "prompt_logprobs", "top_logprobs"):
        if body.get(key) not in (None, False, 0):
            raise ApiError(f"`{key}` is not supported by the simulator.", param=key)
    if body.get("echo"):
        raise ApiError("`echo` is not supported by the simulator.", param="echo")
    if body.get("use_beam_search"):
        raise ApiError("Beam search is not supported by the simulator.")


def _check_model(body: Mapping[str, Any], served_model: str) -> str:
    model = _str(body, "model")
    if model is not None and model != served_model:
        raise ApiError(f"The model `{model}` does not exist.", 404, "NotFoundError")
    return served_model


def _completion_prompt(body: Mapping[str, Any]) -> list[int]:
    prompt = body.get("prompt")
    if prompt is None or prompt == "":
        raise _invalid("value_error", "prompt", "Value error, Either prompt or prompt_embeds "
                       "must be provided and non-empty.", prompt)  # fmt: skip
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, str):
        return tokenizer.encode(prompt, add_bos=True)
    if isinstance(prompt, list) and prompt and all(_is_token_id(t) for t in prompt):
        return list(prompt)
    if isinstance(prompt, list) and prompt and all(isinstance(p, str | list) for p in prompt):
        raise ApiError("Batched prompts are not supported by the simulator; send one prompt.")
    raise _invalid("union_type", "prompt", "Input should be a string or a list of token ids",
                   prompt)  # fmt: skip


def _is_token_id(t: Any) -> bool:
    return isinstance(t, int) and not isinstance(t, bool) and t >= 0


def _chat_prompt(body: Mapping[str, Any]) -> list[int]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _invalid("missing" if messages is None else "list_type", "messages",
                       "Field required" if messages is None else "Input should be a non-empty "
                       "list", messages)  # fmt: skip
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise _invalid("missing", f"messages.{i}", "Each message needs a string `role`", m)
        try:
            tokenizer.message_text(m.get("content"))
        except ValueError as e:
            raise _invalid("value_error", f"messages.{i}.content", str(e), m.get("content")) from e
    add_gen = _bool(body, "add_generation_prompt", True)
    return tokenizer.encode_chat(messages, add_generation_prompt=add_gen)


def _requested_max_tokens(body: Mapping[str, Any], chat: bool) -> int | None:
    if not chat:
        value = _int(body, "max_tokens")
        return 16 if value is None else value  # vLLM's completions default
    # vLLM: `max_completion_tokens or max_tokens` (so 0 falls through, as there).
    return _int(body, "max_completion_tokens") or _int(body, "max_tokens")


def _check_context(num_prompt: int, max_tokens: int | None, max_model_len: int) -> None:
    """vLLM's ``_validate_input``: the prompt must leave room, and so must ``max_tokens``."""
    if num_prompt >= max_model_len:
        raise ApiError(
            f"This model's maximum context length is {max_model_len} tokens. However, your "
            f"request has {num_prompt} input tokens. Please reduce the length of the input "
            "messages."
        )
    if max_tokens is not None and num_prompt + max_tokens > max_model_len:
        raise ApiError(
            "'max_tokens' or 'max_completion_tokens' is too large: "
            f"{max_tokens}. This model's maximum context length is {max_model_len} tokens and "
            f"your request has {num_prompt} input tokens ({max_tokens} > {max_model_len}"
            f" - {num_prompt})."
        )


def _resolve_max_tokens(requested: int | None, room: int) -> int:
    max_tokens = room if requested is None else min(requested, room)
    if max_tokens < 1:
        raise ApiError(f"max_tokens must be at least 1, got {max_tokens}.")
    return max_tokens


def _check_sampling(body: Mapping[str, Any], max_tokens: int) -> int:
    """``SamplingParams``' range checks; returns ``min_tokens``."""
    temperature = _float(body, "temperature")
    if temperature is not None and temperature < 0.0:
        raise ApiError(f"temperature must be non-negative, got {temperature}.")
    top_p = _float(body, "top_p")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ApiError(f"top_p must be in (0, 1], got {top_p}.")
    top_k = _int(body, "top_k")
    if top_k is not None and top_k < -1:
        raise ApiError(f"top_k must be -1 (disable), or at least 1, got {top_k}.")
    for key in ("presence_penalty", "frequency_penalty"):
        v = _float(body, key)
        if v is not None and not -2.0 <= v <= 2.0:
            raise ApiError(f"{key} must be in [-2, 2], got {v}.")
    min_p = _float(body, "min_p")
    if min_p is not None and not 0.0 <= min_p <= 1.0:
        raise ApiError(f"min_p must be in [0, 1], got {min_p}.")
    _check_stop(body.get("stop"))
    min_tokens = _int(body, "min_tokens") or 0
    if min_tokens < 0:
        raise ApiError(f"min_tokens must be greater than or equal to 0, got {min_tokens}.")
    if min_tokens > max_tokens:
        raise ApiError(
            f"min_tokens must be less than or equal to max_tokens={max_tokens}, got {min_tokens}."
        )
    return min_tokens


def _check_stop(stop: Any) -> None:
    """``stop`` is accepted (the simulator ends on its drawn length) but must be well-formed."""
    if stop is None or isinstance(stop, str):
        return
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise _invalid("union_type", "stop", "Input should be a string or a list of strings", stop)


# ---------------------------------------------------------------- /tokenize


def parse_tokenize(body: Any, served_model: str) -> tuple[list[int], bool]:
    """Token ids for a ``/tokenize`` body (``prompt`` or ``messages``) and ``return_token_strs``."""
    if not isinstance(body, dict):
        raise _invalid("model_attributes_type", "", "Input should be a valid dictionary", body)
    _check_model(body, served_model)
    want_strs = _bool(body, "return_token_strs")
    if "messages" in body:
        messages = body["messages"]
        if not isinstance(messages, list):
            raise _invalid("list_type", "messages", "Input should be a valid list", messages)
        add_gen = _bool(body, "add_generation_prompt", True)
        return tokenizer.encode_chat(messages, add_generation_prompt=add_gen), want_strs
    prompt = body.get("prompt")
    if not isinstance(prompt, str):
        raise _invalid("missing" if prompt is None else "string_type", "prompt",
                       "Field required" if prompt is None else "Input should be a valid string",
                       prompt)  # fmt: skip
    return tokenizer.encode(prompt, add_bos=_bool(body, "add_special_tokens", True)), want_strs


def tokenize_response(ids: list[int], max_model_len: int, want_strs: bool) -> bytes:
    strs = [tokenizer.decode([i]) for i in ids] if want_strs else None
    return orjson.dumps(
        {"count": len(ids), "max_model_len": max_model_len, "tokens": ids, "token_strs": strs}
    )


# ---------------------------------------------------------------- whole responses


def _usage(prompt: int, completion: int, cached: int | None) -> dict[str, Any]:
    details = None if cached is None else {"cached_tokens": cached}
    return {
        "prompt_tokens": prompt,
        "total_tokens": prompt + completion,
        "completion_tokens": completion,
        "prompt_tokens_details": details,
    }


def completion_response(
    req: GenerateRequest, text: str, finish: str, completion: int, cached: int | None
) -> bytes:
    """A non-streaming ``text_completion`` body."""
    choice = {
        "index": 0,
        "text": text,
        "logprobs": None,
        "finish_reason": finish,
        "stop_reason": None,
        "prompt_logprobs": None,
    }
    return orjson.dumps(
        {
            "id": req.public_id,
            "object": "text_completion",
            "created": req.created,
            "model": req.model,
            "choices": [choice],
            "service_tier": None,
            "system_fingerprint": None,
            "usage": _usage(len(req.prompt_ids), completion, cached),
            "kv_transfer_params": None,
        }
    )


def chat_response(
    req: GenerateRequest, text: str, finish: str, completion: int, cached: int | None
) -> bytes:
    """A non-streaming ``chat.completion`` body."""
    message = {
        "role": "assistant",
        "content": text,
        "refusal": None,
        "annotations": None,
        "audio": None,
        "function_call": None,
        "tool_calls": [],
        "reasoning_content": None,
    }
    choice = {
        "index": 0,
        "message": message,
        "logprobs": None,
        "finish_reason": finish,
        "stop_reason": None,
    }
    return orjson.dumps(
        {
            "id": req.public_id,
            "object": "chat.completion",
            "created": req.created,
            "model": req.model,
            "choices": [choice],
            "service_tier": None,
            "system_fingerprint": None,
            "usage": _usage(len(req.prompt_ids), completion, cached),
            "prompt_logprobs": None,
            "kv_transfer_params": None,
        }
    )


def models_response(served_model: str, root: str, max_model_len: int) -> bytes:
    """``GET /v1/models``: one model card, shaped like vLLM's ``ModelList``."""
    now = int(time.time())
    permission = {
        "id": f"modelperm-{uuid.uuid4().hex}",
        "object": "model_permission",
        "created": now,
        "allow_create_engine": False,
        "allow_sampling": True,
        "allow_logprobs": True,
        "allow_search_indices": False,
        "allow_view": True,
        "allow_fine_tuning": False,
        "organization": "*",
        "group": None,
        "is_blocking": False,
    }
    card = {
        "id": served_model,
        "object": "model",
        "created": now,
        "owned_by": "vllm",
        "root": root,
        "parent": None,
        "max_model_len": max_model_len,
        "permission": [permission],
    }
    return orjson.dumps({"object": "list", "data": [card]})


def stream_error_frame(message: str, status: int, err_type: str) -> bytes:
    """An SSE error frame then ``[DONE]``, with ``json.dumps``' spacing as vLLM sends it."""
    payload = json.dumps(
        {"error": {"message": message, "type": err_type, "param": None, "code": status}}
    )
    return f"data: {payload}\n\ndata: [DONE]\n\n".encode()


# ---------------------------------------------------------------- streaming chunks


class ChunkWriter:
    """Builds one request's SSE frames from byte templates (the per-chunk hot path).

    Completions chunks are dumped by vLLM with ``exclude_unset=False`` (so ``"usage":null`` and
    every choice field appear); chat chunks with ``exclude_unset=True`` (only the fields it set).
    The first chat content frame is preceded by the role frame, sent with the first token.
    """

    __slots__ = ("_chat", "_head", "_prompt", "_req", "_role_sent")

    def __init__(self, req: GenerateRequest) -> None:
        self._req = req
        self._chat = req.chat
        self._prompt = len(req.prompt_ids)
        self._role_sent = False
        obj = "chat.completion.chunk" if req.chat else "text_completion"
        self._head = (
            b'data: {"id":' + orjson.dumps(req.public_id) + b',"object":"' + obj.encode()
            + b'","created":' + str(req.created).encode() + b',"model":'
            + orjson.dumps(req.model) + b',"choices":'
        )  # fmt: skip

    def delta(self, text: str, completion_so_far: int, finish: str | None = None) -> bytes:
        """The frame(s) carrying ``text`` (and ``finish`` on the last one)."""
        tail = self._usage_tail(completion_so_far)
        if not self._chat:
            fin = b"null" if finish is None else b'"' + finish.encode() + b'"'
            return (
                self._head + b'[{"index":0,"text":' + orjson.dumps(text)
                + b',"logprobs":null,"finish_reason":' + fin + b',"stop_reason":null}],"usage":'
                + (tail or b"null") + b"}\n\n"
            )  # fmt: skip
        frames = b"" if self._role_sent else self._role_frame()
        fin = b"null}" if finish is None else b'"' + finish.encode() + b'","stop_reason":null}'
        usage = b',"usage":' + tail if tail else b""
        return frames + (
            self._head + b'[{"index":0,"delta":{"content":' + orjson.dumps(text)
            + b'},"logprobs":null,"finish_reason":' + fin + b"]" + usage + b"}\n\n"
        )  # fmt: skip

    def _role_frame(self) -> bytes:
        self._role_sent = True
        usage = self._usage_tail(0)
        return (
            self._head + b'[{"index":0,"delta":{"role":"assistant","content":""},'
            b'"logprobs":null,"finish_reason":null}]'
            + (b',"usage":' + usage if usage else b"") + b"}\n\n"
        )  # fmt: skip

    def _usage_tail(self, completion: int) -> bytes | None:
        if not self._req.continuous_usage:
            return None
        usage: dict[str, Any] = {
            "prompt_tokens": self._prompt,
            "total_tokens": self._prompt + completion,
            "completion_tokens": completion,
        }
        if not self._chat:
            usage["prompt_tokens_details"] = None
        return orjson.dumps(usage)

    def final(self, completion: int, cached: int | None) -> bytes:
        """The usage frame (when asked for) and ``[DONE]``."""
        if not self._req.include_usage:
            return b"data: [DONE]\n\n"
        usage = _usage(self._prompt, completion, cached)
        if cached is None:
            del usage["prompt_tokens_details"]  # vLLM dumps this frame with exclude_none
        return self._head + b'[],"usage":' + orjson.dumps(usage) + b"}\n\ndata: [DONE]\n\n"

"""Request parsing: metadata from headers and body; any input is a request or a clean 400."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vllm_control_plane.gateway.errors import GatewayError
from vllm_control_plane.gateway.parsing import TenantPolicy, load_body, parse_request
from vllm_control_plane.types import ParallelismType, RequestPriority

CHAT = [{"role": "user", "content": "hi"}]


def test_headers_become_metadata() -> None:
    headers = {
        "X-Request-Id": "r-1", "X-User-Id": "u", "X-Session-Id": "s", "X-Priority": "critical",
        "X-SLO-Deadline-Ms": "2500", "X-TTFT-SLO-Ms": "300", "X-TPOT-SLO-Ms": "40",
        "X-Cost-Budget": "0.01", "X-Parallelism-Hint": "TP",
    }  # fmt: skip
    body = {"model": "m", "messages": CHAT, "max_tokens": 7, "temperature": 0.2, "seed": 3,
            "stream": True, "stream_options": {"include_usage": True},
            "ignore_eos": True}  # fmt: skip
    req = parse_request(body, headers, chat=True)
    m = req.meta
    assert (m.request_id, m.user_id, m.session_id) == ("r-1", "u", "s")
    assert m.priority is RequestPriority.CRITICAL and m.parallelism_hint is ParallelismType.TP
    assert (m.slo_deadline_ms, m.ttft_slo_ms, m.tpot_slo_ms, m.cost_budget) == (2500, 300, 40, 0.01)
    assert m.max_tokens == 7 and m.ignore_eos and m.messages == CHAT
    assert m.extra_body == {"max_tokens": 7, "temperature": 0.2, "seed": 3}
    assert req.stream and req.include_usage and req.model == "m"


def test_user_field_and_generated_id() -> None:
    req = parse_request({"messages": CHAT, "user": "body-user"}, {}, chat=True)
    assert req.meta.user_id == "body-user" and len(req.meta.request_id) == 24
    assert req.model is None and not req.stream and not req.include_usage
    assert parse_request({"prompt": ["one"]}, {"X-Priority": "4"}, chat=False).meta.priority == 4


def test_tenant_defaults_and_caps() -> None:
    tenant = TenantPolicy("t", RequestPriority.LOW, RequestPriority.NORMAL, cost_budget=0.5)
    req = parse_request({"messages": CHAT}, {}, chat=True, tenant=tenant)
    assert req.meta.priority is RequestPriority.LOW and req.meta.cost_budget == 0.5
    req = parse_request({"messages": CHAT}, {"X-Priority": "critical", "X-Cost-Budget": "2"},
                        chat=True, tenant=tenant)  # fmt: skip
    assert req.meta.priority is RequestPriority.NORMAL and req.meta.cost_budget == 0.5
    assert req.meta.tenant == "t"


@pytest.mark.parametrize("prompt", [[5, 0, 7], [[5, 0, 7]]])
def test_token_id_prompt_is_carried_explicitly(prompt: list) -> None:
    """Token ids (alone or as a batch of one) are counted by length and reach the engine as the
    body's ``prompt``; the request carries no text."""
    req = parse_request({"prompt": prompt, "max_tokens": 2}, {}, chat=False)
    assert req.prompt_token_ids == [5, 0, 7]
    assert req.meta.prompt is None and req.meta.prompt_tokens == 3
    assert req.meta.extra_body == {"prompt": [5, 0, 7], "max_tokens": 2}


def test_text_prompt_has_no_token_ids() -> None:
    req = parse_request({"prompt": ["one"]}, {}, chat=False)
    assert req.meta.prompt == "one" and req.prompt_token_ids is None
    assert req.meta.prompt_tokens is None and "prompt" not in req.meta.extra_body


def test_batched_prompts_name_the_limit() -> None:
    with pytest.raises(GatewayError, match="Batched prompts"):
        parse_request({"prompt": [[1], [2]]}, {}, chat=False)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": None}, "prompt"),
        ({"prompt": []}, "prompt"),
        ({"prompt": [[]]}, "prompt"),
        ({"prompt": [1, -2]}, "prompt"),
        ({"prompt": [1, True]}, "prompt"),
        ({"prompt": [1.0, 2]}, "prompt"),
        ({"prompt": [[1, 2], [3]]}, "prompt"),
        ({"prompt": ["one", "two"]}, "prompt"),
        ({"prompt": [["one"]]}, "prompt"),
        ({"prompt": {"ids": [1]}}, "prompt"),
        ({"prompt": "x", "stream_options": {"include_usage": True}}, "stream"),
        ({"prompt": "x", "stream": True, "stream_options": {"include_usage": 1}},
         "stream_options"),
        ({"prompt": "x", "max_completion_tokens": True}, "max_completion_tokens"),
    ],
)  # fmt: skip
def test_bad_completion_bodies(body: dict, param: str) -> None:
    with pytest.raises(GatewayError) as info:
        parse_request(body, {}, chat=False)
    assert info.value.status == 400 and info.value.param == param


def test_bad_request_id() -> None:
    with pytest.raises(GatewayError, match="X-Request-Id"):
        parse_request({"messages": CHAT}, {"X-Request-Id": "x" * 300}, chat=True)


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
_keys = st.sampled_from(["model", "messages", "prompt", "max_tokens", "n", "stream",
                         "stream_options", "user", "max_completion_tokens",
                         "ignore_eos"])  # fmt: skip
_headers = st.dictionaries(
    st.sampled_from(["X-Priority", "X-SLO-Deadline-Ms", "X-Cost-Budget", "X-Request-Id",
                     "X-Parallelism-Hint", "X-TTFT-SLO-Ms"]),
    st.text(max_size=12),
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(body=st.dictionaries(_keys, _json, max_size=6), headers=_headers, chat=st.booleans())
def test_any_input_is_a_request_or_a_400(body: dict, headers: dict, chat: bool) -> None:
    try:
        raw = load_body(orjson.dumps(body))
        parse_request(raw, headers, chat)
    except GatewayError as e:
        assert e.status == 400 and e.message
    except ValueError as e:  # RequestMetadata's own checks; the route turns them into 400s
        assert str(e)


@given(st.binary(max_size=64))
def test_any_bytes_load_or_400(raw: bytes) -> None:
    try:
        assert isinstance(load_body(raw), dict)
    except GatewayError as e:
        assert e.status == 400

"""Token-id prompts: counted by length, hashed over 16-token blocks as the engines cache them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.core.routing_testkit import FleetDriver, make_fleet

from vllm_control_plane import tokenizer
from vllm_control_plane.core.interfaces import RouteRequest
from vllm_control_plane.core.routing import get_strategy
from vllm_control_plane.gateway.parsing import parse_request
from vllm_control_plane.runtime.prompts import BLOCK_SIZE, prepare_prompt, token_prompt
from vllm_control_plane.sim.kv_cache import hash_token_blocks
from vllm_control_plane.types import RequestMetadata

_ids = st.lists(st.integers(0, 128_000), min_size=1, max_size=200)


def _meta(ids: list[int], rid: str = "r") -> RequestMetadata:
    return RequestMetadata(request_id=rid, extra_body={"prompt": ids})


def test_count_is_the_length_and_no_tokenizer_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: object, **__: object) -> list[int]:
        raise AssertionError("a token-id prompt must not be tokenized")

    monkeypatch.setattr(tokenizer, "encode", refuse)
    ids = list(range(1000, 1040))
    prepared = prepare_prompt(_meta(ids))
    assert prepared.prompt_tokens == 40 and prepared.text == ""
    assert prepared.block_hashes == hash_token_blocks(ids, BLOCK_SIZE)  # the engine's scheme
    assert len(prepared.block_hashes) == 2  # full blocks only: the 8-token tail is not cached


def test_gateway_token_prompt_reaches_the_hashes() -> None:
    ids = list(range(7, 71))
    meta = parse_request({"prompt": [ids]}, {}, chat=False).meta
    assert token_prompt(meta) == ids
    assert prepare_prompt(meta).block_hashes == hash_token_blocks(ids, BLOCK_SIZE)


@pytest.mark.parametrize("prompt", [[], ["a"], [1, "2"], "text", None, [[1, 2]]])
def test_only_a_flat_list_of_ids_is_a_token_prompt(prompt: object) -> None:
    meta = RequestMetadata(request_id="r", extra_body={"prompt": prompt})
    assert token_prompt(meta) is None
    assert prepare_prompt(meta).block_hashes == ()  # a synthetic prompt shares nothing


@given(prefix=_ids, a=_ids, b=_ids)
def test_shared_prefix_shares_exactly_its_full_blocks(prefix: list, a: list, b: list) -> None:
    """Two prompts that first differ at token k share their first k // 16 block hashes, and
    (hashes being chained) nothing after."""
    a, b = [*prefix, 1, *a], [*prefix, 2, *b]
    ha, hb = prepare_prompt(_meta(a)).block_hashes, prepare_prompt(_meta(b)).block_hashes
    shared = len(prefix) // BLOCK_SIZE
    assert ha[:shared] == hb[:shared]
    assert not set(ha[shared:]) & set(hb[shared:])


def _route(ids: list[int], rid: str) -> RouteRequest:
    prepared = prepare_prompt(_meta(ids, rid))
    return RouteRequest(
        _meta(ids, rid), prepared.prompt_tokens, 16, 0.0, block_hashes=prepared.block_hashes
    )


def test_locality_keeps_a_token_id_prefix_on_one_instance() -> None:
    driver = FleetDriver(get_strategy("locality"), make_fleet(4, max_concurrent_requests=100))
    prefixes = [[1000 * g + t for t in range(64)] for g in range(4)]
    homes = {g: driver.dispatch(_route([*prefixes[g], 1], f"g{g}")) for g in range(4)}
    assert len(set(homes.values())) == 4  # distinct prefixes spread over the idle fleet
    for k in range(20):
        g, rid = k % 4, f"q{k}"
        assert driver.dispatch(_route([*prefixes[g], k, k + 1], rid)) == homes[g]
        driver.complete(rid)

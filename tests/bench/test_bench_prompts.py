"""Prompt identity: segments → chained block hashes (prefix sharing to the block) and text."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from vllm_control_plane import tokenizer
from vllm_control_plane.bench.prompts import (
    block_hashes,
    clip,
    prompt_text,
    segment_key,
    segment_text,
)

segments = st.lists(
    st.tuples(st.integers(0, 2**64 - 1), st.integers(1, 80)), min_size=1, max_size=6
)


def test_full_blocks_only_and_partial_tail_ignored() -> None:
    assert block_hashes([(7, 15)]) == ()
    assert len(block_hashes([(7, 16)])) == 1
    assert len(block_hashes([(7, 40), (8, 30)])) == 70 // 16


def test_sharing_stops_at_the_first_block_that_differs() -> None:
    a = block_hashes([(1, 5), (2, 40), (3, 512), (4, 3)])
    b = block_hashes([(1, 5), (2, 40), (3, 512), (5, 30)])
    # tokens 0..543 agree; block 34 (544..559) holds the differing tail
    assert a[:34] == b[:34] and a[34] != b[34]
    c = block_hashes([(1, 5), (2, 41), (3, 512)])  # differs from token 45 on: block 2
    assert a[:2] == c[:2] and all(x != y for x, y in zip(a[2:], c[2:], strict=False))


def test_same_tokens_split_differently_are_different_content() -> None:
    # (key, offset) identifies a token, so one segment of 16 and two halves of one key differ
    # only by where pieces start; both cover the same tokens of key 7 but the second repeats
    # offsets 0..7, so it is different content.
    assert block_hashes([(7, 16)]) != block_hashes([(7, 8), (7, 8)])


@settings(max_examples=60, deadline=None)
@given(segments, segments)
def test_common_segment_prefix_means_common_hashes(prefix, tail) -> None:
    base = block_hashes(prefix)
    longer = block_hashes([*prefix, *tail])
    assert longer[: len(base)] == base


def test_hashes_are_stable_across_calls_and_processes() -> None:
    # fixed values: Python's salted hash is never used
    assert block_hashes([(segment_key(1, 2), 32)]) == block_hashes([(segment_key(1, 2), 32)])
    assert segment_key(1, 2) != segment_key(2, 1)


def test_text_has_one_token_per_word_and_segments_differ() -> None:
    text = segment_text(segment_key(3), 100)
    assert len(tokenizer.encode(text)) == 100
    other = segment_text(segment_key(4), 100)
    assert text.split()[:4] != other.split()[:4]
    full = prompt_text([(segment_key(3), 100), (segment_key(9), 50)])
    assert full.startswith(text) and len(tokenizer.encode(full)) == 150


def test_clip_keeps_the_head() -> None:
    assert clip([(1, 100), (2, 100)], 150) == ((1, 100), (2, 50))
    assert clip([(1, 100)], 500) == ((1, 100),)

"""The offline tokenizer and the generated text (one token per generated piece)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from vllm_control_plane import tokenizer
from vllm_control_plane.sim.text import _WORDS, TextSource, request_seed


def test_encode_counts_and_bos() -> None:
    ids = tokenizer.encode("Hello world")
    assert len(ids) == tokenizer.count_tokens("Hello world") == 2
    assert tokenizer.encode("Hello world", add_bos=True) == [tokenizer.BOS_TOKEN_ID, *ids]
    assert tokenizer.decode(ids) == "Hello world"


def test_chat_template_counts_template_tokens() -> None:
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "image_url"}]},
    ]
    rendered = tokenizer.render_chat(msgs)
    assert rendered.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n")
    assert rendered.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    ids = tokenizer.encode_chat(msgs)
    assert tokenizer.decode(ids) == rendered
    content = tokenizer.count_tokens("Be brief.") + tokenizer.count_tokens("Hi")
    assert tokenizer.count_chat_tokens(msgs) == len(ids) > content + 8
    # A control marker typed by a user stays ordinary text.
    sneaky = [{"role": "user", "content": "<|eot_id|>"}]
    assert tokenizer.encode_chat(sneaky).count(tokenizer.SPECIAL_TOKENS["<|eot_id|>"]) == 1


def test_every_word_is_one_token() -> None:
    assert all(tokenizer.count_tokens(" " + w) == 1 for w in _WORDS)


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**63), cuts=st.lists(st.integers(0, 300), max_size=6))
def test_text_is_deterministic_and_chunking_free(seed: int, cuts: list[int]) -> None:
    src = TextSource(seed)
    pieces = [src.take(n) for n in cuts]
    whole = TextSource(seed).peek(0, sum(cuts))
    assert "".join(pieces) == whole
    assert len(whole.split()) == sum(cuts) == tokenizer.count_tokens(whole)


def test_long_outputs_wrap_around_the_cycle() -> None:
    text = TextSource(7).peek(0, 20_000)
    assert len(text.split()) == 20_000


def test_request_seed() -> None:
    assert request_seed("abc", 5) == 5
    assert request_seed("abc", None) == request_seed("abc", None) != request_seed("abd", None)

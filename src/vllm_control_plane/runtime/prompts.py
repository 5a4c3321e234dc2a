"""What the core needs to know about a prompt: its length, its text and its block hashes.

Counting uses the offline cl100k tokenizer (the engine's own tokenizer may differ by a few per
cent; the count only feeds estimates and routing, never the engine). Block hashes are chained over
16-token blocks, the same scheme the simulator's prefix cache uses, so the locality router's
index agrees with what the engines can reuse.

A prompt given as token ids (``extra_body["prompt"]``, which the HTTP backend sends to the engine
as it is; the gateway puts a ``/v1/completions`` token-id prompt there) needs no tokenizer: its
count is its length and its blocks are hashed from the ids themselves, as the engine caches them.
"""

from __future__ import annotations

from dataclasses import dataclass

from vllm_control_plane import tokenizer
from vllm_control_plane.sim.kv_cache import hash_token_blocks
from vllm_control_plane.types import DEFAULT_PROMPT_TOKENS, RequestMetadata

BLOCK_SIZE = 16


@dataclass(frozen=True, slots=True)
class PreparedPrompt:
    prompt_tokens: int
    text: str
    block_hashes: tuple[int, ...]


def prepare_prompt(request: RequestMetadata) -> PreparedPrompt:
    """Count and hash the request's prompt (synthetic prompts have no shareable blocks)."""
    if request.messages is not None:
        text = tokenizer.render_chat(request.messages)
        ids = tokenizer.encode_chat(request.messages)
    elif request.prompt is not None:
        text = request.prompt
        ids = tokenizer.encode(text, add_bos=True)
    elif (token_ids := token_prompt(request)) is not None:
        # No BOS added: vLLM takes a token-id prompt as it is.
        return PreparedPrompt(len(token_ids), "", hash_token_blocks(token_ids, BLOCK_SIZE))
    else:
        return PreparedPrompt(request.prompt_tokens or DEFAULT_PROMPT_TOKENS, "", ())
    count = request.prompt_tokens or len(ids)
    return PreparedPrompt(count, text, hash_token_blocks(ids, BLOCK_SIZE))


def token_prompt(request: RequestMetadata) -> list[int] | None:
    """The engine prompt as token ids, when the request gives one explicitly (else None)."""
    ids = request.extra_body.get("prompt")
    if isinstance(ids, list) and ids and all(type(t) is int for t in ids):
        return ids
    return None

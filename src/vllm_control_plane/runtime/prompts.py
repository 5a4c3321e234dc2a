"""What the core needs to know about a prompt: its length, its text and its block hashes.

Counting uses the offline cl100k tokenizer (the engine's own tokenizer may differ by a few per
cent; the count only feeds estimates and routing, never the engine). Block hashes are chained over
16-token blocks, the same scheme the simulator's prefix cache uses, so the locality router's
index agrees with what the engines can reuse.
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
    else:
        return PreparedPrompt(request.prompt_tokens or DEFAULT_PROMPT_TOKENS, "", ())
    count = request.prompt_tokens or len(ids)
    return PreparedPrompt(count, text, hash_token_blocks(ids, BLOCK_SIZE))

"""What a benchmark prompt *is*: a sequence of segments, turned into block hashes or text.

How it works: a workload never stores prompt text. A prompt is a tuple of :data:`Segment`
``(key, tokens)`` — a shared system prompt, one turn of a conversation, one 512-token Mooncake
block — and two prompts share a prefix exactly as far as their segment sequences agree.

* :func:`block_hashes` gives the chained hashes of the prompt's full 16-token blocks (what the
  simulated engines' prefix cache and the ``locality`` router compare). A block that straddles
  two segments hashes both pieces, so sharing stops where the segments differ, to the block.
* :func:`prompt_text` gives real text of exactly ``tokens`` tokens per segment (what text-based
  routers — production-stack, SGLang, llm-d — and live servers see): each segment opens with a
  4-word tag drawn from its key, then a window of the simulator's one-token-per-word text
  (:class:`~vllm_control_plane.sim.text.TextSource`) at an offset drawn from its key. Every word
  is one token with the offline tokenizer, so the text has the segment's token count, and two
  different segments differ within their first words.

Everything is deterministic across processes (integer mixing, never Python's salted ``hash``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TypeAlias

import numpy as np

from vllm_control_plane.sim.text import TextSource

Segment: TypeAlias = tuple[int, int]  # (identity key, number of tokens)
BLOCK_SIZE = 16
TAG_WORDS = 4
_MASK64 = (1 << 64) - 1
_CYCLE_BITS = 13  # sim.text's word cycle has 8192 positions


def mix(parent: int, value: int) -> int:
    """splitmix64-style chaining step: cheap, well spread, deterministic."""
    z = (parent * 0x9E3779B97F4A7C15 + value + 0x632BE59BD9B4E019) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def segment_key(*parts: int) -> int:
    """A 64-bit identity from integers (workload seed, session, turn, ...)."""
    h = 0x5EED
    for p in parts:
        h = mix(h, p & _MASK64)
    return h


def prompt_tokens(segments: Iterable[Segment]) -> int:
    return sum(n for _, n in segments)


def _fmix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 arrays (wrapping arithmetic, a bijection)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


_P = 0x9E3779B97F4A7C15  # odd, so invertible modulo 2**64
_P_INV = pow(_P, -1, 1 << 64)


def _pieces(
    segments: Sequence[Segment], block_size: int, full: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per piece (a run of one segment's tokens inside one full block): value and block index.

    Vectorised over the whole prompt: pieces start at every segment start and block boundary.
    """
    live = [(k, n) for k, n in segments if n > 0]
    lengths = np.array([n for _, n in live], dtype=np.int64)
    keys = np.array([(k * _P) & _MASK64 for k, _ in live], dtype=np.uint64)
    seg_start = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    end = full * block_size
    cuts = np.union1d(seg_start[seg_start < end], np.arange(0, end, block_size))
    seg = np.searchsorted(seg_start, cuts, side="right") - 1
    offset = (cuts - seg_start[seg]).astype(np.uint64)
    piece_len = np.diff(np.append(cuts, end)).astype(np.uint64)
    pos = (cuts % block_size).astype(np.uint64)
    with np.errstate(over="ignore"):
        v = keys[seg] + offset
        v = _fmix(v ^ (pos << np.uint64(40)) ^ (piece_len << np.uint64(48)))
    return v, cuts // block_size


_POWERS: list[np.ndarray] = []


def _powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(P^-i, P^i) for i < n mod 2**64, from a table grown on demand."""
    if not _POWERS or len(_POWERS[0]) < n:
        size = max(n, 4096, 2 * len(_POWERS[0]) if _POWERS else 0)
        with np.errstate(over="ignore"):
            inv = np.cumprod(np.full(size, _P_INV, dtype=np.uint64)) * np.uint64(_P)
            fwd = np.cumprod(np.full(size, _P, dtype=np.uint64)) * np.uint64(_P_INV)
        _POWERS[:] = [inv, fwd]
    return _POWERS[0][:n], _POWERS[1][:n]


def block_hashes(segments: Sequence[Segment], block_size: int = BLOCK_SIZE) -> tuple[int, ...]:
    """Chained hashes of the full ``block_size``-token blocks of the prompt.

    Block *i*'s content value ``v_i`` sums its pieces' mixed ``(key, offset, position, length)``;
    the chain is the polynomial ``h_i = Σ_{j≤i} v_j·P^(i−j)`` mod 2⁶⁴ (so ``h_i`` depends on
    blocks 0..i, in order), computed vectorised as ``P^i · cumsum(v_j·P^−j)``, then finalised.
    Equal prefixes give equal hashes; different ones collide with probability ~2⁻⁶⁴.
    """
    full = prompt_tokens(segments) // block_size
    if full == 0:
        return ()
    values, blocks = _pieces(segments, block_size, full)
    starts = np.flatnonzero(np.diff(blocks, prepend=-1))
    inv, fwd = _powers(full)
    with np.errstate(over="ignore"):
        h = np.cumsum(np.add.reduceat(values, starts) * inv, dtype=np.uint64) * fwd
    return tuple(_fmix(h).tolist())


def segment_text(key: int, tokens: int) -> str:
    """``tokens`` one-token words identifying segment ``key`` (see the module doc)."""
    if tokens <= 0:
        return ""
    mask = (1 << _CYCLE_BITS) - 1
    tag = [
        TextSource((key >> (_CYCLE_BITS * i)) & mask).peek(0, 1)
        for i in range(min(TAG_WORDS, tokens))
    ]
    body = tokens - len(tag)
    start = (key >> (_CYCLE_BITS * TAG_WORDS)) & mask
    return "".join(tag) + (TextSource(start).peek(0, body) if body else "")


def prompt_text(segments: Iterable[Segment]) -> str:
    """The prompt as text: each segment's words, concatenated (a leading space included)."""
    return "".join(segment_text(key, n) for key, n in segments)


def clip(segments: Sequence[Segment], max_tokens: int) -> tuple[Segment, ...]:
    """The first ``max_tokens`` tokens of the prompt (the head, where shared prefixes live)."""
    out: list[Segment] = []
    left = max_tokens
    for key, n in segments:
        if left <= 0:
            break
        out.append((key, min(n, left)))
        left -= n
    return tuple(out)

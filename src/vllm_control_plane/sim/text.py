"""Generated text for simulated completions: deterministic pseudo-words, one token each.

How it works: a fixed table of common English words, each a single token (with its leading
space) in the offline tokenizer, is shuffled once into a long cycle by a fixed-seed generator.
A request's text is a window onto that cycle starting at an offset drawn from the request's seed,
so the same seed always yields the same words and the n-th generated token is always the same
word. The cycle's text is precomputed twice over with character offsets, so the text of any run
of tokens is one string slice: cheap enough to run per SSE chunk.

``completion_tokens`` is the number of generated pieces by construction, and re-tokenizing the
text gives the same count (every piece is one token).
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass

_WORD_LIST = (
    "the of and to in is that for it as was with be by on not he this are or his from at which "
    "but have an they you were her she there one all we their has been had more if will would "
    "can when who so what no out up said about other time into only some could them these two "
    "may first then do any like my now over such our man me even most made after also did many "
    "before must through back years where much your way well down should because each just "
    "those people how too little state good very make world still own see men work long get "
    "here between both life being under never day same another know while last might us great "
    "old year off come since against go came right used take three"
)
_WORDS = tuple(_WORD_LIST.split())
_CYCLE = 8192  # tokens before the sequence repeats
_TABLE_SEED = 0x5EED

__all__ = ["TextSource", "request_seed"]


@dataclass(frozen=True, slots=True)
class _Cycle:
    text: str  # the cycle's text, twice over
    offsets: tuple[int, ...]  # char offset of token i in ``text``, for i in 0..2*_CYCLE


def _build_cycle() -> _Cycle:
    rng = random.Random(_TABLE_SEED)
    pieces = [" " + rng.choice(_WORDS) for _ in range(_CYCLE)] * 2
    offsets = [0]
    for p in pieces:
        offsets.append(offsets[-1] + len(p))
    return _Cycle("".join(pieces), tuple(offsets))


_SHARED: _Cycle | None = None


def _cycle() -> _Cycle:
    global _SHARED
    if _SHARED is None:
        _SHARED = _build_cycle()
    return _SHARED


def request_seed(request_id: str, seed: int | None) -> int:
    """The text seed for a request: the client's ``seed`` when given, else one derived from the
    request id (stable across runs, unlike ``hash``)."""
    if seed is not None:
        return seed
    return zlib.crc32(request_id.encode())


class TextSource:
    """The generated text of one request, handed out a few tokens at a time."""

    __slots__ = ("_start", "emitted")

    def __init__(self, seed: int) -> None:
        self._start = seed % _CYCLE
        self.emitted = 0  # tokens handed out so far

    def take(self, n: int) -> str:
        """Text of the next ``n`` tokens."""
        text = self.peek(self.emitted, n)
        self.emitted += n
        return text

    def peek(self, first: int, n: int) -> str:
        """Text of tokens ``first .. first+n-1`` without consuming them."""
        cyc = _cycle()
        out: list[str] = []
        while n > 0:
            pos = (self._start + first) % _CYCLE
            k = min(n, _CYCLE)
            out.append(cyc.text[cyc.offsets[pos] : cyc.offsets[pos + k]])
            first += k
            n -= k
        return out[0] if len(out) == 1 else "".join(out)

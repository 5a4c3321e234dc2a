"""Readers for production request traces (Azure LLM 2023 CSV, Mooncake JSONL).

How it works: each reader streams a file line by line and yields :class:`TraceRecord` with the
arrival time in seconds relative to the trace's first record, the prompt and output lengths
and (Mooncake) the prefix-block ids. A malformed line raises :class:`TraceFormatError` naming
the file and the 1-based line number; nothing is silently skipped except blank lines.
:func:`load_trace` detects the format from the first non-blank line.

Formats (see ``../shared/traces/README.md``):

* Azure: header ``TIMESTAMP,ContextTokens,GeneratedTokens``; timestamps like
  ``2023-11-16 18:15:46.6805900`` (7 fractional digits, more than ``datetime`` parses).
* Mooncake: one JSON object per line with ``timestamp`` (ms), ``input_length``,
  ``output_length`` and ``hash_ids`` (one id per 512-token block; equal ids = shared prefix).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from itertools import islice
from pathlib import Path
from typing import Literal

TraceFormat = Literal["azure", "mooncake"]
AZURE_HEADER = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
MOONCAKE_TOKENS_PER_BLOCK = 512


class TraceFormatError(ValueError):
    """A trace file is not in the expected format; the message names the file and line."""

    def __init__(self, path: str | Path, line: int, reason: str) -> None:
        super().__init__(f"{path}:{line}: {reason}")
        self.path, self.line, self.reason = str(path), line, reason


@dataclass(frozen=True, slots=True)
class TraceRecord:
    """One request of a trace."""

    arrival_s: float  # seconds since the trace's first record
    prompt_tokens: int
    output_tokens: int
    block_ids: tuple[int, ...] = ()  # Mooncake prefix-block ids (512 tokens each), else ()


def _parse_azure_time(text: str) -> tuple[int, float]:
    """``(whole seconds since the epoch, fraction)`` for ``YYYY-MM-DD HH:MM:SS[.fffffff]``.

    Kept apart so relative times do not lose the sub-microsecond digits to float rounding."""
    base, _, frac = text.strip().partition(".")
    dt = datetime.strptime(base, "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc)
    if frac and not frac.isdigit():
        raise ValueError(f"bad fractional seconds {frac!r}")
    return int(dt.timestamp()), (int(frac) / 10 ** len(frac) if frac else 0.0)


def _count(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)
        else:
            raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def read_azure(path: str | Path) -> Iterator[TraceRecord]:
    """Stream an Azure LLM inference trace CSV."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = csv.reader(f)
        header = next(rows, None)
        if header is None or tuple(h.strip() for h in header) != AZURE_HEADER:
            raise TraceFormatError(path, 1, f"expected header {','.join(AZURE_HEADER)}")
        origin: tuple[int, float] | None = None
        for row in rows:
            line = rows.line_num
            if not row or all(not c.strip() for c in row):
                continue
            try:
                if len(row) != 3:
                    raise ValueError(f"expected 3 fields, got {len(row)}")
                ts = _parse_azure_time(row[0])
                prompt = _count(row[1], "ContextTokens", 1)
                output = _count(row[2], "GeneratedTokens", 0)
            except ValueError as exc:
                raise TraceFormatError(path, line, str(exc)) from None
            origin = ts if origin is None else origin
            yield TraceRecord((ts[0] - origin[0]) + (ts[1] - origin[1]), prompt, output)


def read_mooncake(path: str | Path) -> Iterator[TraceRecord]:
    """Stream a Mooncake trace (JSON lines)."""
    with open(path, encoding="utf-8") as f:
        origin: float | None = None
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = _parse_mooncake_line(line)
            except ValueError as exc:
                raise TraceFormatError(path, line_no, str(exc)) from None
            origin = rec.arrival_s if origin is None else origin
            yield TraceRecord(
                rec.arrival_s - origin, rec.prompt_tokens, rec.output_tokens, rec.block_ids
            )


def _parse_mooncake_line(line: str) -> TraceRecord:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON: {exc.msg}") from None
    if not isinstance(obj, dict):
        raise ValueError("expected a JSON object")
    missing = [k for k in ("timestamp", "input_length", "output_length") if k not in obj]
    if missing:
        raise ValueError(f"missing field(s): {', '.join(missing)}")
    ts = obj["timestamp"]
    if isinstance(ts, bool) or not isinstance(ts, (int, float)):
        raise ValueError(f"timestamp must be a number, got {ts!r}")
    ids = obj.get("hash_ids", [])
    if not isinstance(ids, list):
        raise ValueError("hash_ids must be a list")
    block_ids = tuple(_count(i, "hash_ids entry", 0) for i in ids)
    return TraceRecord(
        ts / 1000.0,
        _count(obj["input_length"], "input_length", 1),
        _count(obj["output_length"], "output_length", 0),
        block_ids,
    )


def detect_format(path: str | Path) -> TraceFormat:
    """Guess the format from the first non-blank line."""
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            text = line.strip()
            if not text:
                continue
            if text.startswith("{"):
                return "mooncake"
            if text.replace(" ", "").split(",")[:1] == ["TIMESTAMP"]:
                return "azure"
            raise TraceFormatError(path, line_no, "neither an Azure CSV header nor a JSON line")
    raise TraceFormatError(path, 1, "empty trace file")


def iter_trace(path: str | Path, fmt: TraceFormat | None = None) -> Iterator[TraceRecord]:
    """Stream any supported trace; ``fmt`` overrides detection."""
    fmt = fmt or detect_format(path)
    return read_azure(path) if fmt == "azure" else read_mooncake(path)


def load_trace(
    path: str | Path, limit: int | None = None, fmt: TraceFormat | None = None
) -> list[TraceRecord]:
    """Read a whole trace (or its first ``limit`` records) into a list."""
    return list(islice(iter_trace(path, fmt), limit))

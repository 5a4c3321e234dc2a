"""Readers for production request traces (Azure LLM 2023 CSV, Mooncake JSONL).

How it works: each reader parses a file line by line and yields :class:`TraceRecord` in arrival
order with the arrival time in seconds relative to the trace's earliest record (never negative),
the prompt and output lengths and (Mooncake) the prefix-block ids. A file that is not sorted by
time is sorted (stably); with ``sort=False`` a reader streams instead and rejects a line whose
timestamp goes backwards. A malformed line raises :class:`TraceFormatError` naming the file and
the 1-based line number; nothing is silently skipped except blank lines. Files are UTF-8, a
byte-order mark allowed. :func:`load_trace` detects the format from the first non-blank line.

Formats (see ``../shared/traces/README.md``):

* Azure: header ``TIMESTAMP,ContextTokens,GeneratedTokens``; timestamps like
  ``2023-11-16 18:15:46.6805900`` (7 fractional digits, more than ``datetime`` parses), also
  with a ``T`` separator and a zone suffix (``Z``, ``+00:00``); without one, UTC.
* Mooncake: one JSON object per line with ``timestamp`` (ms), ``input_length``,
  ``output_length`` and ``hash_ids`` (one id per 512-token block; equal ids = shared prefix).
"""

from __future__ import annotations

import csv
import json
import re
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


_AZURE_TIME = re.compile(
    r"(\d{4}-\d{2}-\d{2})[ T](\d{2}:\d{2}:\d{2})(?:\.(\d+))?\s*(Z|[+-]\d{2}(?::?\d{2})?)?",
    re.IGNORECASE,
)


def _parse_azure_time(text: str) -> tuple[int, float]:
    """``(whole seconds since the epoch, fraction)`` for ``YYYY-MM-DD HH:MM:SS[.fffffff]``.

    A ``T`` may separate date and time, and a zone suffix (``Z``, ``+00:00``, ``-0530``) may
    follow; without one the time is taken as UTC. Kept apart so relative times do not lose the
    sub-microsecond digits to float rounding."""
    m = _AZURE_TIME.fullmatch(text.strip())
    if m is None:
        raise ValueError(
            f"timestamp {text.strip()!r} does not match YYYY-MM-DD HH:MM:SS[.fffffff][+HH:MM]"
        )
    date, clock, frac, zone = m.groups()
    try:
        dt = datetime.strptime(f"{date} {clock}", "%Y-%m-%d %H:%M:%S")
    except ValueError as exc:  # e.g. month 13
        raise ValueError(f"timestamp {text.strip()!r}: {exc}") from None
    seconds = int(dt.replace(tzinfo=timezone.utc).timestamp())
    if zone and zone.upper() != "Z":
        digits = zone[1:].replace(":", "")
        offset = int(digits[:2]) * 3600 + int(digits[2:] or 0) * 60
        seconds -= offset if zone[0] == "+" else -offset
    return seconds, (int(frac) / 10 ** len(frac) if frac else 0.0)


def _count(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)
        else:
            raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


# (1-based line, arrival as (whole seconds, fraction), prompt, output, block ids)
_Row = tuple[int, tuple[int, float], int, int, tuple[int, ...]]


def _relative(path: str | Path, rows: Iterator[_Row], sort: bool) -> Iterator[TraceRecord]:
    """Records with arrivals relative to the earliest one (never negative).

    ``sort``: read every row first, then order them by timestamp (stable: ties keep the file's
    order). Otherwise stream in file order and reject a timestamp earlier than the previous
    row's, naming its line."""
    if sort:
        ordered = sorted(rows, key=lambda r: r[1])
        origin = ordered[0][1] if ordered else (0, 0.0)
        for _, ts, prompt, output, ids in ordered:
            yield TraceRecord((ts[0] - origin[0]) + (ts[1] - origin[1]), prompt, output, ids)
        return
    first: tuple[int, float] | None = None
    prev: tuple[int, tuple[int, float]] | None = None
    for line, ts, prompt, output, ids in rows:
        if prev is not None and ts < prev[1]:
            raise TraceFormatError(
                path,
                line,
                f"timestamp earlier than line {prev[0]}'s: the file is not sorted by time "
                "(load_trace / iter_trace sort it)",
            )
        first = ts if first is None else first
        prev = (line, ts)
        yield TraceRecord((ts[0] - first[0]) + (ts[1] - first[1]), prompt, output, ids)


def _azure_rows(path: str | Path) -> Iterator[_Row]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = csv.reader(f)
        header = next(rows, None)
        if header is None or tuple(h.strip() for h in header) != AZURE_HEADER:
            raise TraceFormatError(path, 1, f"expected header {','.join(AZURE_HEADER)}")
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
            yield line, ts, prompt, output, ()


def read_azure(path: str | Path, *, sort: bool = True) -> Iterator[TraceRecord]:
    """An Azure LLM inference trace CSV (UTF-8, a BOM allowed), in arrival order.

    ``sort=False`` streams the file line by line instead and rejects unsorted lines."""
    return _relative(path, _azure_rows(path), sort)


def _mooncake_rows(path: str | Path) -> Iterator[_Row]:
    with open(path, encoding="utf-8-sig") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                ts, prompt, output, ids = _parse_mooncake_line(line)
            except ValueError as exc:
                raise TraceFormatError(path, line_no, str(exc)) from None
            yield line_no, (0, ts), prompt, output, ids


def read_mooncake(path: str | Path, *, sort: bool = True) -> Iterator[TraceRecord]:
    """A Mooncake trace (JSON lines; UTF-8, a BOM allowed), in arrival order.

    ``sort=False`` streams the file line by line instead and rejects unsorted lines."""
    return _relative(path, _mooncake_rows(path), sort)


def _parse_mooncake_line(line: str) -> tuple[float, int, int, tuple[int, ...]]:
    """(arrival in seconds, prompt tokens, output tokens, block ids) of one JSON line."""
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
    return (
        ts / 1000.0,
        _count(obj["input_length"], "input_length", 1),
        _count(obj["output_length"], "output_length", 0),
        block_ids,
    )


def detect_format(path: str | Path) -> TraceFormat:
    """Guess the format from the first non-blank line."""
    with open(path, encoding="utf-8-sig") as f:
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


def iter_trace(
    path: str | Path, fmt: TraceFormat | None = None, *, sort: bool = True
) -> Iterator[TraceRecord]:
    """Any supported trace in arrival order; ``fmt`` overrides detection (see ``read_*``)."""
    fmt = fmt or detect_format(path)
    return read_azure(path, sort=sort) if fmt == "azure" else read_mooncake(path, sort=sort)


def load_trace(
    path: str | Path, limit: int | None = None, fmt: TraceFormat | None = None
) -> list[TraceRecord]:
    """Read a whole trace into a list, sorted by arrival (or its first ``limit`` records)."""
    return list(islice(iter_trace(path, fmt), limit))

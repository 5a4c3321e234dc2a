"""Trace readers: the shared Azure and Mooncake files, format detection, malformed lines."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from vllm_control_plane.bench.traces import (
    TraceFormatError,
    TraceRecord,
    detect_format,
    iter_trace,
    load_trace,
)

TRACES = Path(__file__).resolve().parents[3] / "shared" / "traces"
AZURE = TRACES / "azure_llm_2023_conv.csv"
MOONCAKE = TRACES / "mooncake_conversation.jsonl"
needs_traces = pytest.mark.skipif(not AZURE.exists(), reason="shared traces not present")


@needs_traces
def test_azure_trace_reads_every_row() -> None:
    records = load_trace(AZURE)
    assert len(records) == 19_366
    assert records[0] == TraceRecord(0.0, 374, 44)
    assert records[1].arrival_s == pytest.approx(4.314579, abs=1e-6)
    assert 3400 < records[-1].arrival_s < 3700
    assert all(b.arrival_s >= a.arrival_s for a, b in itertools.pairwise(records))
    mean_in = sum(r.prompt_tokens for r in records) / len(records)
    assert 1100 < mean_in < 1210  # README: mean 1155


@needs_traces
def test_mooncake_trace_reads_every_row() -> None:
    records = load_trace(MOONCAKE)
    assert len(records) == 12_031
    first = records[0]
    assert (first.arrival_s, first.prompt_tokens, first.output_tokens) == (0.0, 6758, 500)
    assert first.block_ids == tuple(range(14))
    assert records[-1].arrival_s == pytest.approx(3536.999)


@needs_traces
def test_detection_and_limit() -> None:
    assert detect_format(AZURE) == "azure" and detect_format(MOONCAKE) == "mooncake"
    assert len(load_trace(MOONCAKE, limit=5)) == 5
    assert next(iter_trace(AZURE)).prompt_tokens == 374


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_azure_relative_times_and_blank_lines(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "a.csv",
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 23:59:59.5,10,2\n\n"
        "2023-11-17 00:00:01,20,0\n",
    )
    assert load_trace(path) == [TraceRecord(0.0, 10, 2), TraceRecord(1.5, 20, 0)]


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("2023-11-16 18:15:50.99,abc,3", "ContextTokens"),
        ("2023-11-16 18:15:50.99,12", "3 fields"),
        ("yesterday,12,3", "does not match"),
        ("2023-11-16 18:15:50.99,0,3", ">= 1"),
    ],
)
def test_azure_malformed_line_names_file_and_line(tmp_path: Path, line: str, why: str) -> None:
    path = write(
        tmp_path,
        "bad.csv",
        f"TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.68,1,1\n{line}\n",
    )
    with pytest.raises(TraceFormatError, match=why) as err:
        load_trace(path)
    assert err.value.line == 3 and str(path) in str(err.value) and ":3:" in str(err.value)


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ('{"timestamp": 5, "input_length": 10}', "output_length"),
        (
            '{"timestamp": 5, "input_length": 10, "output_length": 1, "hash_ids": [1, "x"]}',
            "hash_ids",
        ),
        ('{"timestamp": "soon", "input_length": 10, "output_length": 1}', "timestamp"),
        ("{not json", "invalid JSON"),
        ("[1, 2]", "JSON object"),
    ],
)
def test_mooncake_malformed_line_names_file_and_line(tmp_path: Path, line: str, why: str) -> None:
    good = '{"timestamp": 1000, "input_length": 10, "output_length": 1, "hash_ids": [0]}'
    path = write(tmp_path, "bad.jsonl", f"{good}\n\n{line}\n")
    it = iter_trace(path)
    assert next(it) == TraceRecord(0.0, 10, 1, (0,))
    with pytest.raises(TraceFormatError, match=why) as err:
        next(it)
    assert err.value.line == 3 and f"{path}:3:" in str(err.value)


def test_unknown_or_empty_files_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(TraceFormatError, match="neither"):
        load_trace(write(tmp_path, "x.txt", "hello,world\n"))
    with pytest.raises(TraceFormatError, match="empty"):
        load_trace(write(tmp_path, "e.txt", "\n\n"))
    with pytest.raises(TraceFormatError, match="header") as err:
        load_trace(write(tmp_path, "h.csv", "TIMESTAMP,Foo\n"), fmt="azure")
    assert err.value.line == 1

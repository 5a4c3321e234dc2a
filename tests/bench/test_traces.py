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
    it = iter_trace(path, sort=False)  # streamed: the good line comes out first
    assert next(it) == TraceRecord(0.0, 10, 1, (0,))
    with pytest.raises(TraceFormatError, match=why) as err:
        next(it)
    assert err.value.line == 3 and f"{path}:3:" in str(err.value)
    with pytest.raises(TraceFormatError, match=why) as err:  # sorted: before any record
        load_trace(path)
    assert err.value.line == 3


def test_unknown_or_empty_files_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(TraceFormatError, match="neither"):
        load_trace(write(tmp_path, "x.txt", "hello,world\n"))
    with pytest.raises(TraceFormatError, match="empty"):
        load_trace(write(tmp_path, "e.txt", "\n\n"))
    with pytest.raises(TraceFormatError, match="header") as err:
        load_trace(write(tmp_path, "h.csv", "TIMESTAMP,Foo\n"), fmt="azure")
    assert err.value.line == 1


def test_a_utf8_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    azure = tmp_path / "bom.csv"
    azure.write_bytes(
        "\ufeffTIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.5,10,2\n".encode()
    )
    mooncake = tmp_path / "bom.jsonl"
    mooncake.write_bytes(
        '\ufeff{"timestamp": 0, "input_length": 10, "output_length": 1}\n'.encode()
    )
    assert detect_format(azure) == "azure" and detect_format(mooncake) == "mooncake"
    assert load_trace(azure) == [TraceRecord(0.0, 10, 2)]
    assert load_trace(mooncake) == [TraceRecord(0.0, 10, 1)]


def test_azure_iso_timestamps_with_zones(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "tz.csv",
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16T18:15:46.6805900+00:00,10,1\n"
        "2023-11-16 18:15:47.6805900Z,10,1\n"
        "2023-11-16T20:15:48.1805900+02:00,10,1\n"  # 18:15:48.18 UTC
        "2023-11-16T12:45:49.1805900-0530,10,1\n"  # 18:15:49.18 UTC
        "2023-11-16 18:15:50,10,1\n",  # no zone: UTC
    )
    times = [r.arrival_s for r in load_trace(path)]
    assert times == pytest.approx([0.0, 1.0, 1.5, 2.5, 3.3194100], abs=1e-9)


def test_unsorted_files_are_sorted_or_rejected_never_negative(tmp_path: Path) -> None:
    azure = write(
        tmp_path,
        "u.csv",
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:15:50,30,3\n"
        "2023-11-16 18:15:46,10,1\n"
        "2023-11-16 18:15:48,20,2\n",
    )
    records = load_trace(azure)
    assert [(r.arrival_s, r.prompt_tokens) for r in records] == [(0.0, 10), (2.0, 20), (4.0, 30)]
    assert load_trace(azure, limit=1) == [TraceRecord(0.0, 10, 1)]  # the earliest, not line 2
    with pytest.raises(TraceFormatError, match="not sorted") as err:
        list(iter_trace(azure, sort=False))
    assert err.value.line == 3 and "line 2" in str(err.value)
    mooncake = write(
        tmp_path,
        "u.jsonl",
        '{"timestamp": 3000, "input_length": 30, "output_length": 1}\n'
        '{"timestamp": 1000, "input_length": 10, "output_length": 1}\n'
        '{"timestamp": 1000, "input_length": 11, "output_length": 1}\n',
    )
    records = load_trace(mooncake)
    assert [(r.arrival_s, r.prompt_tokens) for r in records] == [(0.0, 10), (0.0, 11), (2.0, 30)]
    assert all(r.arrival_s >= 0 for r in records)
    with pytest.raises(TraceFormatError, match="not sorted") as err:
        list(iter_trace(mooncake, sort=False))
    assert err.value.line == 2


def test_azure_bad_dates_and_zones_name_the_line(tmp_path: Path) -> None:
    for bad in ("2023-13-16 18:15:46", "2023-11-16 18:15:46+2", "2023-11-16 18:15:46.5 UTC"):
        path = write(tmp_path, "z.csv", f"TIMESTAMP,ContextTokens,GeneratedTokens\n{bad},1,1\n")
        with pytest.raises(TraceFormatError) as err:
            load_trace(path)
        assert err.value.line == 2 and f"{path}:2:" in str(err.value), bad

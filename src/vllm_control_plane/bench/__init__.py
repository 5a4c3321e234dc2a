"""Benchmark building blocks: trace readers (``bench.traces``) and, later, workloads and runners."""

from __future__ import annotations

from vllm_control_plane.bench.traces import (
    TraceFormatError,
    TraceRecord,
    iter_trace,
    load_trace,
    read_azure,
    read_mooncake,
)

__all__ = [
    "TraceFormatError",
    "TraceRecord",
    "iter_trace",
    "load_trace",
    "read_azure",
    "read_mooncake",
]

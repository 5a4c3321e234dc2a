"""The benchmark (``vcp bench``, docs/bench.md).

Modules: ``workloads`` (synthetic, multi-turn chat, trace replay), ``traces`` (Azure / Mooncake
readers), ``prompts`` (segments → block hashes and text), ``setup`` (fleets, configurations,
baselines, the project's best), ``runner_virtual`` (the core over simulated engines in virtual
time), ``runner_live`` (any OpenAI-compatible URL), ``goodput`` (the search), ``report``
(figures), ``compare`` (a scenario's full comparison), ``scenarios`` (the six shipped ones),
``plots`` / ``artifacts`` (PNG, markdown, JSON) and ``cli``. Only the trace readers are imported
here, so ``vcp`` starts fast; import the others from their modules.
"""

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

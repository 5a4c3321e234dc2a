"""The shipped benchmark scenarios: a fleet, a workload with its SLOs, and a window.

Each scenario is one command (``vcp bench compare --scenario NAME``); docs/bench.md explains
why each SLO is what it is. Every request class carries an SLO, so a request that is refused,
shed or left unfinished always counts against attainment — no configuration can gain by
refusing work.

The window (``duration_s``) is how many seconds of arrivals one run simulates at the scenario's
nominal rate multiplier; a goodput search compresses the same request stream into that window at
other multipliers. Windows are long enough for queues to reach their steady state (several
minutes) and short enough that a full comparison runs in minutes on two cores.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vllm_control_plane.bench.setup import FleetSpec, InstanceGroup
from vllm_control_plane.bench.workloads import (
    ChatSpec,
    ChatWorkload,
    LengthDist,
    RequestClass,
    SyntheticSpec,
    SyntheticWorkload,
    TraceWorkload,
    Workload,
)
from vllm_control_plane.types import RequestPriority as P

# ../shared/traces relative to the project root (a source checkout); --traces-dir overrides it.
TRACES_DIR = Path(__file__).resolve().parents[3].parent / "shared" / "traces"
AZURE_TRACE = "azure_llm_2023_conv.csv"
MOONCAKE_TRACE = "mooncake_conversation.jsonl"


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    summary: str
    fleet: FleetSpec
    make_workload: Callable[[int, Path], Workload]  # (seed, traces dir) -> workload
    duration_s: float
    start_multiplier: float = 1.0  # where a goodput search starts (near the knee)

    def workload(self, seed: int = 0, traces_dir: Path | None = None) -> Workload:
        return self.make_workload(seed, traces_dir or TRACES_DIR)


# ------------------------------------------------------------------------ 1. priorities ----
PRIORITY_CLASSES = (
    RequestClass("critical", 0.1, P.CRITICAL, ttft_slo_ms=1000, tpot_slo_ms=100),
    RequestClass("high", 0.2, P.HIGH, ttft_slo_ms=2000, tpot_slo_ms=100),
    RequestClass("normal", 0.4, P.NORMAL, ttft_slo_ms=5000, tpot_slo_ms=150),
    RequestClass("low", 0.3, P.LOW, ttft_slo_ms=30000, tpot_slo_ms=200),
)


def _priorities(seed: int, _: Path) -> Workload:
    spec = SyntheticSpec(
        rate=16.0,
        arrival_cv=1.5,
        prompt=LengthDist(1024, 1.0, 32, 6144),
        output=LengthDist(256, 1.0, 8, 1024),
        classes=PRIORITY_CLASSES,
    )
    return SyntheticWorkload(spec, seed)


# --------------------------------------------------------------- 2. interactive + batch ----
INTERACTIVE_BATCH_CLASSES = (
    RequestClass(
        "interactive",
        0.7,
        P.HIGH,
        ttft_slo_ms=500,
        tpot_slo_ms=50,
        max_tokens=512,
        prompt=LengthDist(512, 1.0, 16, 4096),
        output=LengthDist(128, 1.0, 4, 512),
    ),
    RequestClass(
        "batch",
        0.3,
        P.LOW,
        e2e_slo_ms=120_000,
        max_tokens=2048,
        prompt=LengthDist(3072, 0.5, 256, 7168),
        output=LengthDist(512, 0.8, 16, 2048),
    ),
)


def _interactive_batch(seed: int, _: Path) -> Workload:
    return SyntheticWorkload(SyntheticSpec(rate=12.0, classes=INTERACTIVE_BATCH_CLASSES), seed)


# ------------------------------------------------------------------- 3. heterogeneous ----
HETERO_CLASSES = (RequestClass("chat", ttft_slo_ms=2000, tpot_slo_ms=100),)


def _heterogeneous(seed: int, _: Path) -> Workload:
    spec = SyntheticSpec(
        rate=100.0,
        prompt=LengthDist(1024, 1.0, 32, 6144),
        output=LengthDist(200, 1.0, 8, 1024),
        classes=HETERO_CLASSES,
    )
    return SyntheticWorkload(spec, seed)


# ------------------------------------------------------------------------- 4. multi-turn ----
CHAT_CLASSES = (RequestClass("chat", ttft_slo_ms=1000, tpot_slo_ms=100),)


def _multiturn(seed: int, _: Path) -> Workload:
    spec = ChatSpec(
        session_rate=1.0,
        mean_turns=6,
        think_s=30.0,
        system_prompts=16,
        system_tokens=1536,
        classes=CHAT_CLASSES,
    )
    return ChatWorkload(spec, seed)


# ------------------------------------------------------------------ 5, 6. trace replay ----
TRACE_CLASSES = (RequestClass("chat", ttft_slo_ms=2000, tpot_slo_ms=100),)
MOONCAKE_CLASSES = (RequestClass("chat", ttft_slo_ms=10_000, tpot_slo_ms=100),)


def _azure(seed: int, traces: Path) -> Workload:
    return TraceWorkload(traces / AZURE_TRACE, classes=TRACE_CLASSES, seed=seed)


def _mooncake(seed: int, traces: Path) -> Workload:
    return TraceWorkload(
        traces / MOONCAKE_TRACE, classes=MOONCAKE_CLASSES, max_model_len=32768, seed=seed
    )


H100 = "H100"
SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "priorities",
            "Mixed priorities under contention",
            "4 priority classes (critical 10 %, high 20 %, normal 40 %, low 30 %) with SLOs from "
            "tight to loose, bursty arrivals (gamma, CV 1.5) on 2 × A100-80G, llama-3-8b.",
            FleetSpec((InstanceGroup("a100", 2, gpu="A100-80G"),)),
            _priorities,
            duration_s=300,
        ),
        Scenario(
            "interactive_batch",
            "Tight-SLO interactive traffic plus batch jobs",
            "70 % interactive (TTFT 500 ms, TPOT 50 ms) and 30 % batch (end-to-end 120 s, long "
            "outputs) on 2 × H100, llama-3-8b.",
            FleetSpec((InstanceGroup("h100", 2, gpu=H100),)),
            _interactive_batch,
            duration_s=300,
        ),
        Scenario(
            "heterogeneous",
            "Heterogeneous fleet",
            "1 × H100 TP4, 2 × A100-80G TP2 and 2 × L4 serving llama-3-8b; chat traffic with "
            "TTFT 2 s and TPOT 100 ms.",
            FleetSpec(
                (
                    InstanceGroup("h100tp4", 1, gpu=H100, tp=4),
                    InstanceGroup("a100tp2", 2, gpu="A100-80G", tp=2),
                    InstanceGroup("l4", 2, gpu="L4"),
                )
            ),
            _heterogeneous,
            duration_s=90,
        ),
        Scenario(
            "multiturn",
            "Multi-turn chat with shared system prompts",
            "Conversations (6 turns on average, 30 s think time) over 16 shared 1.5K-token system "
            "prompts; each turn re-sends the history. 4 × A100-80G, llama-3-8b.",
            FleetSpec((InstanceGroup("a100", 4, gpu="A100-80G"),)),
            _multiturn,
            duration_s=300,
        ),
        Scenario(
            "azure",
            "Azure LLM 2023 conversation trace",
            "The Azure conversation trace's arrivals and lengths (no prefix information) on "
            "2 × A100-80G, llama-3-8b; TTFT 2 s, TPOT 100 ms.",
            FleetSpec((InstanceGroup("a100", 2, gpu="A100-80G"),)),
            _azure,
            duration_s=300,
            start_multiplier=2.0,
        ),
        Scenario(
            "mooncake",
            "Mooncake conversation trace",
            "The Mooncake conversation trace (12K-token prompts on average, shared prefix blocks) "
            "on 2 × H100, qwen2.5-7b (32K context); TTFT 10 s, TPOT 100 ms.",
            FleetSpec((InstanceGroup("h100", 2, model="qwen2.5-7b", gpu=H100),)),
            _mooncake,
            duration_s=300,
        ),
    )
}


def get_scenario(name: str) -> Scenario:
    key = name.strip().lower().replace("-", "_")
    if key not in SCENARIOS:
        raise ValueError(f"unknown scenario {name!r}; valid: {', '.join(SCENARIOS)}")
    return SCENARIOS[key]

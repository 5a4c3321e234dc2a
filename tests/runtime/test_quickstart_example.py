"""The guide's complete example (examples/quickstart.py), run as a user would, against `vcp sim`.

What the run must show follows from its setup, not from timing luck:

* five requests of 100 tokens (``max_tokens``; the simulator's seeded natural lengths of these
  ids are all longer, so every one stops at the cap), a 32-token synthetic prompt each;
* the engine's own ``/metrics`` count the same tokens the control plane reports;
* the engine models time: one model second lasts ``time_scale`` wall seconds, and a request
  cannot finish sooner on the wall than ``time_scale`` × its model latency (the engine's
  ``vllm:e2e_request_latency_seconds``, in model seconds), less the runner's ``max_lag``
  (50 ms, how late it may run before re-anchoring); the control plane's latency adds its own
  and HTTP's overhead on top;
* Llama-3-70B on TP4 H100s takes ~1.6 s of model time for these requests (the batch of five),
  so the 1 s SLO is decided by the scale:
  - ``0.8``: every request takes > 1.5 model seconds (asserted from the histogram), hence
    ≥ 0.8 × 1.5 − 0.05 = 1.15 s on the wall: all miss, whatever the machine's load; they still
    finish well inside the example's fixed 2 s wait (~1.3 s);
  - ``0.1``: every request takes ≤ 2.5 model seconds, ≤ 0.25 s on the wall, so it meets the 1 s
    SLO unless the overhead exceeds 0.75 s (it is ~30 ms): all meet.
"""

from __future__ import annotations

import math
import os
import re
import selectors
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from vllm_control_plane.sim.output_len import natural_length

ROOT = Path(__file__).resolve().parents[2]
REQUEST_IDS = [f"req-{i:03d}" for i in range(5)]  # as the example names them
MAX_TOKENS, PROMPT_TOKENS, SLO_MS = 100, 32, 1000.0  # the example's requests
SIM_SEED, SIM_MEAN_OUTPUT = 0, 256.0  # `vcp sim --seed 0`, EngineSpec.mean_output_tokens
MAX_LAG_S = 0.05  # EngineRunner's max_lag
RESULT = re.compile(
    r"(?P<rid>req-\d{3}): completed instance=(?P<iid>\S+) prompt_tokens=(?P<prompt>\d+) "
    r"completion_tokens=(?P<completion>\d+) latency=(?P<latency>[\d.]+)ms "
    r"ttft=(?P<ttft>[\d.]+)ms slo_met=(?P<slo_met>True|False) chars=(?P<chars>\d+) text="
)


def _start_sim(time_scale: float) -> tuple[subprocess.Popen[str], int]:
    """`vcp sim` on a free port (``--port 0``); the port is read from its announcement, which
    it prints once the server is bound."""
    cmd = [sys.executable, "-m", "vllm_control_plane.cli", "sim", "--model", "llama-3-70b",
           "--gpu", "H100", "--tp", "4", "--host", "127.0.0.1", "--port", "0",
           "--seed", str(SIM_SEED), "--time-scale", str(time_scale)]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)  # fmt: skip
    assert proc.stdout is not None
    deadline = time.monotonic() + 30.0
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not sel.select(timeout=deadline - time.monotonic()):
                break
            line = proc.stdout.readline()
            if not line:
                break
            m = re.match(r"sim: http://127\.0\.0\.1:(\d+)\s", line)
            if m:
                return proc, int(m.group(1))
    proc.kill()
    proc.wait(timeout=10)
    raise AssertionError(f"vcp sim did not announce its port: {proc.stdout.read()}")


@pytest.fixture
def sim(request: pytest.FixtureRequest) -> Iterator[tuple[int, float]]:
    time_scale = request.param
    proc, port = _start_sim(time_scale)
    try:
        yield port, time_scale
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _engine_metrics(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = tuple(sorted((k, v) for k, v in s.labels.items() if k == "le" or
                                  k == "finished_reason"))  # fmt: skip
            out[(s.name, labels)] = s.value
    return out


def _run_example(port: int) -> str:
    env = {**os.environ, "VCP_HOST": "127.0.0.1", "VCP_PORT": str(port)}
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py")],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    return out.stdout


@pytest.mark.parametrize(
    ("sim", "expected_compliance"), [(0.1, 1.0), (0.8, 0.0)], indirect=["sim"],
    ids=["scale0.1-all-meet", "scale0.8-all-miss"],
)  # fmt: skip
def test_quickstart_example_completes_all_requests(
    sim: tuple[int, float], expected_compliance: float
) -> None:
    port, scale = sim
    stdout = _run_example(port)
    figures = dict(line.split(": ", 1) for line in stdout.splitlines() if ": " in line)
    results = {m["rid"]: m for m in map(RESULT.match, stdout.splitlines()) if m}

    # The completions: every request, with text and the engine's token counts.
    assert figures["Completed"] == "5", stdout
    assert figures["Failed"] == "0", stdout
    assert figures["Running"] == "0" and figures["Queued"] == "0", stdout
    assert sorted(results) == REQUEST_IDS, stdout
    for rid, r in results.items():
        expected_tokens = min(MAX_TOKENS, natural_length(SIM_SEED, rid, SIM_MEAN_OUTPUT))
        assert expected_tokens == MAX_TOKENS  # these ids' natural lengths exceed the cap
        assert int(r["completion"]) == expected_tokens, stdout
        assert int(r["prompt"]) == PROMPT_TOKENS, stdout
        assert int(r["chars"]) > 0 and r["iid"] == "vllm-1", stdout
        assert float(r["ttft"]) < float(r["latency"]), stdout

    # The control plane's token figures are the engine's.
    engine = _engine_metrics(port)
    total_completion = sum(int(r["completion"]) for r in results.values())
    assert int(figures["Generated Tokens"]) == total_completion == 5 * MAX_TOKENS
    assert engine[("vllm:generation_tokens_total", ())] == total_completion
    assert engine[("vllm:prompt_tokens_total", ())] == 5 * PROMPT_TOKENS
    assert engine[("vllm:request_success_total", (("finished_reason", "length"),))] == 5

    # Latencies: at least the scaled model time, and the printed aggregates match the requests.
    model_e2e = "vllm:e2e_request_latency_seconds"
    assert engine[(model_e2e + "_count", ())] == 5
    model_mean_s = engine[(model_e2e + "_sum", ())] / 5
    latencies = [float(r["latency"]) for r in results.values()]
    ttfts = [float(r["ttft"]) for r in results.values()]
    avg_latency = float(figures["Avg Latency"].removesuffix("ms"))
    assert avg_latency == pytest.approx(sum(latencies) / 5, abs=0.01)
    assert float(figures["Avg TTFT"].removesuffix("ms")) == pytest.approx(sum(ttfts) / 5, abs=0.01)
    assert avg_latency >= (scale * model_mean_s - MAX_LAG_S) * 1e3, (model_mean_s, stdout)
    assert max(latencies) < 2000 + 100  # done within the example's 2 s wait (+ submission)
    p99 = float(figures["P99 Latency"].removesuffix("ms"))
    assert avg_latency - 0.01 <= p99 <= max(latencies) + 0.01

    # SLO: the run's own timings decide each request, and the scale decides the outcome.
    met = [float(r["latency"]) <= SLO_MS for r in results.values()]
    assert met == [r["slo_met"] == "True" for r in results.values()], stdout
    compliance = float(figures["SLO Compliance"].removesuffix("%")) / 100
    assert math.isclose(compliance, sum(met) / 5), stdout
    within = {le: engine[(model_e2e + "_bucket", (("le", le),))] for le in ("1.5", "2.5")}
    if expected_compliance == 0.0:
        assert within["1.5"] == 0  # every request > 1.5 model s: ≥ 1.15 s on the wall at 0.8
    else:
        assert within["2.5"] == 5  # every request ≤ 2.5 model s: ~0.25 s on the wall at 0.1
    assert compliance == expected_compliance, stdout

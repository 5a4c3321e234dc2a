"""``vcp sim`` as a real process, started through the console script."""

from __future__ import annotations

import contextlib
import http.client
import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

VCP = shutil.which("vcp", path=str(Path(sys.executable).parent)) or shutil.which("vcp")


@contextlib.contextmanager
def vcp_sim(*args: str, lines: int = 1) -> Iterator[tuple[subprocess.Popen[str], list[str]]]:
    """Run ``vcp sim ARGS``; yield the process and its first ``lines`` announcement lines."""
    assert VCP is not None, "the vcp console script is not installed"
    proc = subprocess.Popen(
        [VCP, "sim", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        yield proc, [proc.stdout.readline().strip() for _ in range(lines)]  # type: ignore[union-attr]
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


def _url(line: str) -> str:
    return next(word for word in line.split() if word.startswith("http://"))


def _health(url: str) -> int | None:
    """Status of GET /health, or None when the connection is refused."""
    try:
        with urllib.request.urlopen(url + "/health", timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except urllib.error.URLError:
        return None


def _wait_healthy(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while _health(url) != 200:
        assert time.monotonic() < deadline, f"{url} never became healthy"
        time.sleep(0.05)


def test_vcp_sim_serves_openai_and_stops_on_sigterm() -> None:
    with vcp_sim("--model", "llama-3-70b", "--gpu", "H100", "--tp", "4", "--port", "0",
                 "--time-scale", "0.02") as (proc, lines):  # fmt: skip
        url = _url(lines[0])
        assert "model=llama-3-70b" in lines[0] and "tp=4" in lines[0]
        _wait_healthy(url)
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        with client:
            chat = client.chat.completions.create(
                model="llama-3-70b", messages=[{"role": "user", "content": "hi"}], max_tokens=4
            )
        assert chat.choices[0].message.role == "assistant"
        assert 1 <= chat.usage.completion_tokens <= 4
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


def test_vcp_sim_fleet_file(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(
        "time_scale: 0.02\nservers:\n  - {name: a, model: llama-3-8b}\n"
        "  - {name: b, model: qwen2.5-7b, faults: {unhealthy: true}}\n"
    )
    with vcp_sim("--fleet", str(fleet), lines=2) as (proc, lines):
        assert lines[0].startswith("a: http://") and lines[1].startswith("b: http://")
        a, b = (_url(line) for line in lines)
        _wait_healthy(a)
        assert _health(b) == 503  # the fault from the file
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0


def test_invalid_fleet_file_exits_with_key_path(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text("servers:\n  - {name: a, gpuu: H100}\n")
    result = subprocess.run(
        [VCP, "sim", "--fleet", str(fleet)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and "servers[0].gpuu" in result.stderr


def test_startup_delay_then_healthy() -> None:
    with vcp_sim("--port", "0", "--fault-startup-delay", "1.0") as (_, lines):
        assert "port opens in 1s" in lines[0]
        url = _url(lines[0])
        assert _health(url) is None  # connection refused while "starting"
        _wait_healthy(url)


def test_crash_exit_kills_the_process() -> None:
    with vcp_sim("--port", "0", "--time-scale", "0.02", "--fault-crash-after-tokens", "3",
                 "--fault-crash-exit") as (proc, lines):  # fmt: skip
        url = _url(lines[0])
        _wait_healthy(url)
        body = json.dumps({"prompt": "x", "max_tokens": 50, "ignore_eos": True, "stream": True})
        req = urllib.request.Request(url + "/v1/completions", data=body.encode(),
                                     headers={"Content-Type": "application/json"})  # fmt: skip
        with (
            pytest.raises((OSError, http.client.HTTPException)),
            urllib.request.urlopen(req, timeout=10) as r,  # cut mid-stream
        ):
            r.read()
        assert proc.wait(timeout=10) == 1


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def _complete(url: str, model: str, n: int) -> dict:
    body = json.dumps({"model": model, "prompt": "hi", "max_tokens": n, "ignore_eos": True})
    req = urllib.request.Request(url + "/v1/completions", data=body.encode(),
                                 headers={"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def test_vcp_sim_inline_model_and_gpu_profiles() -> None:
    """``--model NAME --model-params ...`` defines the profile it serves (context length from
    ``--model-context-len``), ``--gpu NAME --gpu-flops ...`` the hardware."""
    with vcp_sim("--model", "my-13b", "--model-params", "13e9", "--model-layers", "40",
                 "--model-kv-heads", "40", "--model-head-dim", "128",
                 "--model-context-len", "2048", "--gpu", "my-gpu", "--gpu-flops", "400e12",
                 "--gpu-mem-bw", "2e12", "--gpu-mem-bytes", "48e9", "--port", "0",
                 "--time-scale", "0.02") as (proc, lines):  # fmt: skip
        assert "model=my-13b gpu=my-gpu" in lines[0], lines
        url = _url(lines[0])
        _wait_healthy(url)
        (card,) = _get_json(url + "/v1/models")["data"]
        assert card["id"] == "my-13b" and card["max_model_len"] == 2048
        assert _complete(url, "my-13b", 5)["usage"]["completion_tokens"] == 5
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


def test_vcp_sim_fleet_file_defines_models_and_gpus(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(
        "time_scale: 0.02\n"
        "models:\n"
        "  fleet-13b:\n"
        "    params: 13e9          # PyYAML reads this as a string; it is coerced\n"
        "    num_layers: 40\n"
        "    num_kv_heads: 40\n"
        "    head_dim: 128\n"
        "    context_len: 2048\n"
        "    aliases: [org/Fleet-13B]\n"
        "gpus:\n"
        "  fleet-gpu: {flops: 400.0e+12, mem_bw: 2.0e+12, mem_bytes: 48.0e+9}\n"
        "servers:\n"
        "  - {name: a, model: org/fleet-13b, gpu: fleet-gpu}\n"
        "  - {name: b, model: llama-3-8b, max_model_len: 1024}\n"
    )
    with vcp_sim("--fleet", str(fleet), lines=2) as (proc, lines):
        a, b = (_url(line) for line in lines)
        assert "model=org/fleet-13b gpu=fleet-gpu" in lines[0], lines
        _wait_healthy(a)
        (card,) = _get_json(a + "/v1/models")["data"]
        assert card["max_model_len"] == 2048 and card["root"] == "org/fleet-13b"
        assert _complete(a, card["id"], 3)["usage"]["completion_tokens"] == 3
        _wait_healthy(b)  # a built-in model next to the file's own
        assert _get_json(b + "/v1/models")["data"][0]["max_model_len"] == 1024
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0

"""Config reload: every changed setting is either applied to the running control plane or
reported under ``restart_needed`` — never silently ignored — and requests in flight survive it.

The SIGHUP test drives ``vcp serve --config FILE`` as a user runs it (a subprocess on a free
port); the admin-call test looks inside the running objects to see each change land.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from tests.gateway.conftest import ADMIN, ADMIN_TOKEN, CHAT, gateway_config, read_until, sim

from vllm_control_plane.config import ControlPlaneConfig, parse_config
from vllm_control_plane.gateway import Gateway, GatewayServer
from vllm_control_plane.gateway.reload import LIVE, OWN, RELOAD_RULES, RESTART, plan_reload
from vllm_control_plane.runtime.retry_budget import RetryBudget, RetryBudgetConfig

_BASE: dict[str, Any] = {
    "instances": [{"instance_id": "real", "port": 8001}],
    "simulated": [{"name": "s"}],
}

# One change per config key (a section ruled field by field: one per field). A key added to the
# config without an entry here, or without a rule in RELOAD_RULES, fails the tests below.
_CHANGES: dict[str, Any] = {
    "server.host": "0.0.0.0",
    "server.port": 9999,
    "server.max_body_bytes": 65536,
    "server.shutdown_grace_s": 5.0,
    "server.retry_after_s": 3,
    "admin": {"token": "t"},
    "scheduling_policy": "fifo",
    "routing_strategy": "round_robin",
    "limits.max_queued": 5,
    "limits.max_queued_per_priority": {"background": 1},
    "limits.max_retries": 0,
    "limits.retry_backoff_s": 0.5,
    "limits.aging_s": 5.0,
    "limits.saturation_waiting": 3,
    "limits.saturation_kv": 0.5,
    "limits.hard_deadlines": True,
    "limits.history_size": 10,
    "limits.drain_timeout_s": 3.0,
    "limits.adaptive_concurrency": {},
    "monitor": {"health_interval_s": 3.0},
    "timeouts": {"connect_s": 1.0},
    "circuit": {"failure_threshold": 2},
    "retry_budget": {"ratio": 0.5},
    "tenants": [{"name": "acme", "api_keys": ["sk-1"]}],
    "prices": {"H100": 9.0},
    "instances": [{"instance_id": "real", "port": 8002}],
    "simulated": [{"name": "s"}, {"name": "t"}],
    "seed": 3,
}


def _changed(key: str) -> ControlPlaneConfig:
    data = copy.deepcopy(_BASE)
    section, _, name = key.partition(".")
    if name:
        data.setdefault(section, {})[name] = _CHANGES[key]
    else:
        data[section] = _CHANGES[key]
    return parse_config(data)


def _keys() -> list[str]:
    keys = []
    for section, info in ControlPlaneConfig.model_fields.items():
        if isinstance(RELOAD_RULES.get(section), dict):
            model = info.annotation
            assert isinstance(model, type)
            keys += [f"{section}.{name}" for name in model.model_fields]  # type: ignore[attr-defined]
        else:
            keys.append(section)
    return keys


def test_every_config_key_has_a_reload_rule() -> None:
    assert set(RELOAD_RULES) == set(ControlPlaneConfig.model_fields)
    for section, rule in RELOAD_RULES.items():
        if isinstance(rule, dict):
            model = ControlPlaneConfig.model_fields[section].annotation
            assert set(rule) == set(model.model_fields), section  # type: ignore[union-attr]
            assert set(rule.values()) <= {LIVE, RESTART}
        else:
            assert rule in (LIVE, RESTART, OWN)
    assert set(_keys()) == set(_CHANGES), "a config key without a change in this test"


@pytest.mark.parametrize("key", sorted(_CHANGES))
def test_a_change_of_any_key_is_applied_or_reported(key: str) -> None:
    old = parse_config(_BASE)
    plan = plan_reload(old, _changed(key))
    summary = plan.summary()
    reported = summary["applied"] + summary["restart_needed"]
    rule = RELOAD_RULES[key.partition(".")[0]]
    if isinstance(rule, dict):
        rule = rule[key.partition(".")[2]]
    if rule == OWN:
        assert reported == []
        own = {"scheduling_policy": summary["scheduling_policy"],
               "routing_strategy": summary["routing_strategy"],
               "instances": summary["replaced"], "simulated": summary["added"]}  # fmt: skip
        assert own[key]
    else:
        assert reported == [key], summary
        assert (key in summary["applied"]) == (rule == LIVE)
    assert plan_reload(old, old).summary()["applied"] == []
    assert plan_reload(old, old).summary()["restart_needed"] == []


def test_timeouts_circuit_retry_budget_and_limits_are_live_prices_and_monitor_are_not() -> None:
    old = parse_config(_BASE)
    new = parse_config({
        **_BASE,
        "timeouts": {"idle_s": 5}, "circuit": {"open_s": 2}, "retry_budget": {"floor": 1},
        "limits": {"max_queued": 7, "aging_s": 9}, "prices": {"H100": 1.0},
        "monitor": {"scrape_interval_s": 2},
    })  # fmt: skip
    summary = plan_reload(old, new).summary()
    assert summary["applied"] == ["limits.max_queued", "timeouts", "circuit", "retry_budget"]
    assert summary["restart_needed"] == ["limits.aging_s", "monitor", "prices"]


def test_a_new_retry_budget_keeps_the_counts_of_its_window() -> None:
    budget = RetryBudget(RetryBudgetConfig(ratio=0.0, floor=1))
    budget.on_request(0.0)
    budget.on_retry(0.0)
    assert budget.veto(0.1) is not None  # the floor of one is used up
    budget.reconfigure(RetryBudgetConfig(ratio=0.0, floor=2))
    assert budget.veto(0.2) is None  # the retry already made still counts against the new floor
    budget.on_retry(0.2)
    assert budget.veto(0.3) is not None


# ---------------------------------------------------------------- on a running gateway


async def _stream(http: aiohttp.ClientSession, url: str, max_tokens: int,
                  started: asyncio.Event) -> bytes:  # fmt: skip
    body = {"model": "llama-3-8b", "messages": CHAT, "max_tokens": max_tokens,
            "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    async with http.post(url + "/v1/chat/completions", json=body) as resp:
        assert resp.status == 200
        data = bytearray(await resp.content.readline())
        started.set()
        data += await resp.read()
        return bytes(data)


def _tokens(stream: bytes) -> int:
    """completion_tokens of the stream's usage frame (the stream is complete and well formed)."""
    frames = [f for f in stream.split(b"\n\n") if f]
    assert frames[-1] == b"data: [DONE]" and all(f.startswith(b"data: ") for f in frames)
    usage = json.loads(frames[-2][6:])["usage"]
    return int(usage["completion_tokens"])


async def test_admin_reload_applies_live_settings_and_keeps_a_stream(tmp_path: Path, http) -> None:
    first = gateway_config(simulated=[sim("sim-a", time_scale=2.0)])
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(first))
    async with GatewayServer(Gateway(parse_config(first), config_path=path), port=0) as server:
        gw = server.gateway
        started = asyncio.Event()
        task = asyncio.create_task(_stream(http, server.url, 150, started))
        await asyncio.wait_for(started.wait(), 10)
        changed = {**first,
                   "timeouts": {"connect_s": 1.5, "first_token_s": 20, "idle_s": 7},
                   "circuit": {"failure_threshold": 2, "open_s": 0.5},
                   "retry_budget": {"ratio": 0.7, "floor": 3},
                   "limits": {"max_queued": 11, "max_retries": 1, "drain_timeout_s": 4},
                   "server": {"retry_after_s": 4}, "prices": {"H100": 9.0},
                   "monitor": {**first["monitor"], "health_interval_s": 0.5}}  # fmt: skip
        path.write_text(yaml.safe_dump(changed))
        async with http.post(server.url + "/admin/reload", headers=ADMIN) as resp:
            assert resp.status == 200
            report = await resp.json()
        assert gw.in_flight == 1 and not task.done(), "the stream runs across the reload"
        assert report["applied"] == ["server.retry_after_s", "limits.max_queued",
                                     "limits.max_retries", "limits.drain_timeout_s", "timeouts",
                                     "circuit", "retry_budget"]  # fmt: skip
        assert report["restart_needed"] == ["monitor", "prices"]
        assert report["added"] == report["removed"] == report["replaced"] == []
        cp = gw.cp
        assert (cp.core.limits.max_queued, cp.core.limits.max_retries) == (11, 1)
        assert cp.drain_timeout_s == 4
        assert (cp.breakers.config.failure_threshold, cp.breakers.config.open_s) == (2, 0.5)
        assert (cp.retry_budget.config.ratio, cp.retry_budget.config.floor) == (0.7, 3)
        backend = gw.backend.inner
        assert (backend.timeouts.connect, backend.timeouts.first_token,  # type: ignore[attr-defined]
                backend.timeouts.idle) == (1.5, 20, 7)  # type: ignore[attr-defined]  # fmt: skip
        assert backend.pool.connect_timeout == 1.5  # type: ignore[attr-defined]
        stream = await asyncio.wait_for(task, 60)
        assert stream.endswith(b"data: [DONE]\n\n") and b'"error"' not in stream
        assert _tokens(stream) == 150
        assert [i.instance_id for i in cp.get_instances()] == ["sim-a"]


# ---------------------------------------------------------------- SIGHUP to `vcp serve`

_URL = re.compile(rb"OpenAI API on (http://[\d.]+:\d+)/v1")
_RELOADED = re.compile(rb"(reloaded config: .*|reload failed.*)")


@pytest.fixture
async def serve_proc(tmp_path: Path) -> AsyncIterator[tuple[asyncio.subprocess.Process, Path]]:
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(_serve_config()))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vllm_control_plane.cli", "serve", "--config", str(path),
        "--host", "127.0.0.1", "--port", "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        yield proc, path
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


def _serve_config(**overrides: Any) -> dict[str, Any]:
    return {
        "admin": {"token": ADMIN_TOKEN},
        "server": {"shutdown_grace_s": 5},
        "simulated": [sim("sim-a", time_scale=3.0)],
        **overrides,
    }


async def _post(http: aiohttp.ClientSession, url: str, **headers: str) -> tuple[int, Any]:
    body = {"model": "llama-3-8b", "messages": CHAT, "max_tokens": 2}
    async with http.post(url + "/v1/chat/completions", json=body, headers=headers) as resp:
        return resp.status, await resp.json(content_type=None)


async def test_sighup_applies_the_new_file_and_keeps_the_stream_in_flight(serve_proc, http) -> None:
    proc, path = serve_proc
    url = (await read_until(proc, _URL))[0].decode()
    status, _ = await _post(http, url, **{"X-Priority": "background"})
    assert status == 200
    started = asyncio.Event()
    task = asyncio.create_task(_stream(http, url, 200, started))
    await asyncio.wait_for(started.wait(), 20)
    # background requests may no longer queue at all; the breakers get a new threshold
    path.write_text(yaml.safe_dump(_serve_config(
        limits={"max_queued_per_priority": {"background": 0}},
        circuit={"failure_threshold": 3}, seed=5)))  # fmt: skip
    proc.send_signal(signal.SIGHUP)
    line = (await read_until(proc, _RELOADED))[0].decode()
    assert line.startswith("reloaded config:"), line
    assert "'applied': ['limits.max_queued_per_priority', 'circuit']" in line
    assert "'restart_needed': ['seed']" in line
    assert not task.done(), "the stream must still be running across the reload"
    status, body = await _post(http, url, **{"X-Priority": "background"})
    assert status == 429 and body["error"]["code"] == "queue_full", body
    status, _ = await _post(http, url)  # other priorities are not affected
    assert status == 200
    stream = await asyncio.wait_for(task, 60)
    assert stream.endswith(b"data: [DONE]\n\n") and b'"error"' not in stream
    assert _tokens(stream) == 200
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 30) == 0

"""Fleet files (valid and invalid) and several simulated servers in one event loop."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import orjson
import pytest

from vllm_control_plane.sim.fleet import FleetConfigError, load_fleet, parse_fleet
from vllm_control_plane.sim.launcher import SimFleet, SimServer, describe
from vllm_control_plane.sim.types import EngineSpec

FLEET = """
time_scale: 0.02
servers:
  - name: small
    model: llama-3-8b
    gpu: H100
    seed: 3
    mean_output_tokens: 8
  - name: big
    model: llama-3-70b
    gpu: H100
    tp: 4
    max_model_len: 4096
    served_model_name: big-model
    time_scale: 0.05
    legacy_metrics: true
    faults: {error_rate: 0.25, error_status: 503}
"""


def test_load_valid_fleet(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text(FLEET)
    cfg = load_fleet(path)
    small, big = cfg.servers
    assert small.to_spec() == EngineSpec(model="llama-3-8b", gpu="H100", seed=3,
                                         mean_output_tokens=8.0)  # fmt: skip
    assert big.to_spec().tp == 4 and big.to_spec().served_model_name == "big-model"
    assert big.faults.error_rate == 0.25 and big.faults.error_status == 503
    servers = cfg.build_servers()
    assert [s.name for s in servers] == ["small", "big"]
    assert servers[0]._options["time_scale"] == 0.02  # inherited from the fleet
    assert servers[1]._options["time_scale"] == 0.05  # overridden per server
    assert servers[1]._options["legacy_metrics"] is True


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"servers": [{"name": "a", "tpp": 2}]}, "servers[0].tpp: unknown key"),
        ({"servers": [{"name": "a"}, {"name": "b", "faults": {"eror_rate": 1}}]},
         "servers[1].faults.eror_rate"),
        ({"servers": [{"name": "a", "tp": 0}]}, "servers[0].tp"),
        ({"servers": [{"name": "a", "faults": {"error_rate": 2}}]}, "servers[0].faults.error_rate"),
        ({"servers": [{"name": "a"}, {"name": "a"}]}, "duplicate server names: a"),
        ({"servers": [{"name": "a", "port": 9000}, {"name": "b", "port": 9000}]},
         "127.0.0.1:9000"),
        ({"servers": []}, "servers"),
        ({"server": []}, "server: unknown key"),
        ({"servers": [{"port": 1}]}, "servers[0].name: Field required"),
        ([1, 2], "expected a mapping"),
    ],
)  # fmt: skip
def test_invalid_fleet_names_the_key(data: object, fragment: str) -> None:
    with pytest.raises(FleetConfigError) as e:
        parse_fleet(data)
    assert fragment in str(e.value)


def test_unreadable_or_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(FleetConfigError, match="cannot read"):
        load_fleet(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("servers: [\n")
    with pytest.raises(FleetConfigError, match="not valid YAML"):
        load_fleet(bad)


async def test_fleet_runs_in_one_loop_and_closes_cleanly() -> None:
    before = asyncio.all_tasks()
    fleet = SimFleet.from_config(parse_fleet(orjson.loads(orjson.dumps({
        "time_scale": 0.02,
        "servers": [{"name": "a", "mean_output_tokens": 8},
                    {"name": "b", "model": "qwen2.5-7b", "mean_output_tokens": 8}],
    }))))  # fmt: skip
    async with fleet:
        assert fleet.names == ["a", "b"] and len(set(fleet.urls.values())) == 2
        async with aiohttp.ClientSession() as s:
            for srv in fleet:
                async with s.get(srv.url + "/v1/models") as r:
                    models = orjson.loads(await r.read())
                assert models["data"][0]["id"] == srv.spec.model
                body = {"prompt": "x", "max_tokens": 4, "stream": True}
                async with s.post(srv.url + "/v1/completions", json=body) as r:
                    assert r.status == 200 and (await r.read()).endswith(b"data: [DONE]\n\n")
        assert fleet["b"].engine.stats().generation_tokens > 0
        assert "a: http://127.0.0.1:" in describe(fleet["a"])
    leftover = {t for t in asyncio.all_tasks() - before if not t.done()}
    assert leftover == set()


async def test_close_cuts_open_streams_and_leaves_nothing(sim_spec: EngineSpec) -> None:
    before = asyncio.all_tasks()
    srv = SimServer(sim_spec, time_scale=1.0)
    await srv.start()
    async with aiohttp.ClientSession() as s:
        body = {"prompt": "x", "max_tokens": 5000, "ignore_eos": True, "stream": True}
        resp = await s.post(srv.url + "/v1/completions", json=body)
        await resp.content.readuntil(b"\n\n")
        await srv.close()
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
    assert {t for t in asyncio.all_tasks() - before if not t.done()} == set()
    assert not srv.ready


def test_duplicate_names_in_sim_fleet(sim_spec: EngineSpec) -> None:
    with pytest.raises(ValueError, match="duplicate"):
        SimFleet([SimServer(sim_spec, name="x"), SimServer(sim_spec, name="x")])

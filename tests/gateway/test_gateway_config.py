"""Config models: strict keys with paths, name checks, mapping onto the library's objects."""

from __future__ import annotations

from pathlib import Path

import pytest

from vllm_control_plane.config import (
    ConfigError,
    default_config,
    load_config,
    parse_config,
)
from vllm_control_plane.gateway.reload import plan_reload

EXAMPLE = Path(__file__).parents[2] / "examples" / "cluster.yaml"


def _error(data: object) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data, "cluster.yaml")
    return str(info.value)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"instances": [{"instance_id": "a", "prot": 1}]}, "instances[0].prot: unknown key"),
        ({"limits": {"max_queud": 3}}, "limits.max_queud: unknown key"),
        ({"server": {"port": 70000}}, "server.port: Input should be less than or equal"),
        ({"scheduling_policy": "magic"}, "scheduling_policy: unknown name 'magic'; valid: fifo"),
        ({"routing_strategy": "nope"}, "routing_strategy: unknown name 'nope'"),
        ({"prices": {"H900": 2.0}}, "prices: H900: unknown GPU"),
        ({"tenants": [{"name": "t", "api_keys": []}]}, "tenants[0].api_keys"),
        ({"limits": {"max_queued_per_priority": {"urgent": 3}}},
         "limits.max_queued_per_priority.urgent"),
        ({"instances": [{"instance_id": "a"}], "simulated": [{"name": "a"}]},
         "duplicate instance ids: a"),
        ({"instances": [{"instance_id": "a", "url": "ftp://x"}]}, "url must look like"),
        ({"simulated": [{"name": "s", "tp": 0}]}, "simulated[0].tp"),
        ([1, 2], "expected a mapping"),
        ({"tenants": [{"name": "a/b", "api_keys": ["k"]}]}, "tenants[0].name: 'a/b': use letters"),
        ({"tenants": [{"name": "a", "api_keys": ["k"]}, {"name": "a", "api_keys": ["j"]}]},
         "duplicate tenant names: a"),
        ({"tenants": [{"name": "a", "api_keys": ["k"], "rate_limit": {"burst": 3}}]},
         "tenants[0].rate_limit: burst needs requests_per_s"),
        ({"tenants": [{"name": "a", "api_keys": ["k"], "rate_limit": {}}]},
         "tenants[0].rate_limit: set requests_per_s and/or max_concurrent"),
        ({"tenants": [{"name": "a", "api_keys": ["k"], "rate_limit": {"requests_per_s": 0}}]},
         "tenants[0].rate_limit.requests_per_s: Input should be greater than 0"),
        ({"tenants": [{"name": "a", "api_keys": ["k"], "rate_limit": {"max_concurent": 2}}]},
         "tenants[0].rate_limit.max_concurent: unknown key"),
        ({"admin": {"protect_metrics": True, "token_env": "VCP_UNSET_1",
                    "metrics_token_env": "VCP_UNSET_2"}},
         "admin: protect_metrics is on but neither token nor metrics_token"),
        ({"admin": {"protect_pages": True, "metrics_token": "m", "token_env": "VCP_UNSET_1"}},
         "admin: protect_pages is on but no admin token"),
        ({"admin": {"protect_metric": True}}, "admin.protect_metric: unknown key"),
    ],
)  # fmt: skip
def test_bad_config_names_the_key_and_why(data: object, expected: str) -> None:
    assert expected in _error(data)


def test_tenant_limits_and_protection_map_onto_the_runtime() -> None:
    config = parse_config({
        "admin": {"metrics_token": "m-9f3e", "protect_metrics": True},
        "tenants": [{"name": "acme.eu-1", "api_keys": ["k"],
                     "rate_limit": {"requests_per_s": 2.5, "max_concurrent": 4}}],
    })  # fmt: skip
    limit = config.tenants[0].rate_limit.to_core()  # type: ignore[union-attr]
    assert (limit.requests_per_s, limit.capacity, limit.max_concurrent) == (2.5, 3.0, 4)
    assert config.admin.resolve_metrics_token() == "m-9f3e" and "m-9f3e" not in repr(config)


def test_every_problem_is_reported_at_once() -> None:
    message = _error({"instances": [{"instance_id": "a", "prot": 1}], "scheduling_policy": "x"})
    assert "instances[0].prot" in message and "scheduling_policy" in message


def test_instances_map_onto_execution_instances() -> None:
    config = parse_config({
        "prices": {"h100": 2.5},
        "instances": [
            {"instance_id": "a", "url": "http://10.0.0.5:9000", "model_name": "llama-3-70b",
             "tensor_parallel_size": 4, "gpu_type": "H100", "api_key": "engine-secret"},
            {"instance_id": "b", "host": "b.local", "gpu_type": "L4", "cost_per_gpu_hour": 0.5},
        ],
    })  # fmt: skip
    a, b = config.execution_instances()
    assert (a.host, a.port, a.gpu_count, a.cost_per_gpu_hour) == ("10.0.0.5", 9000, 4, 2.5)
    assert a.api_key == "engine-secret" and "engine-secret" not in repr(config)
    assert (b.host, b.port, b.cost_per_gpu_hour) == ("b.local", 8000, 0.5)
    kwargs = config.manager_kwargs()
    assert kwargs["limits"].max_queued == 10_000 and kwargs["monitor_config"].health_interval == 1


def test_default_config_is_an_embedded_fleet_of_two_models() -> None:
    config = default_config()
    assert not config.instances
    layouts = {(s.model, s.gpu, s.tp, s.pp) for s in config.simulated}
    assert layouts == {("llama-3-70b", "H100", 4, 1), ("llama-3-70b", "A100-80G", 2, 2),
                       ("llama-3-8b", "L4", 1, 1)}  # fmt: skip
    inst = config.simulated[1].to_instance("127.0.0.1", 1234)
    assert inst.gpu_count == 4 and inst.gpu_type == "A100-80G"


def test_example_cluster_file_is_valid() -> None:
    config = load_config(EXAMPLE)
    assert config.instances and config.tenants and config.simulated


def test_load_config_reports_unreadable_and_invalid_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_config(empty).scheduling_policy == "adaptive"


def test_reload_plan_diffs_instances_and_settings() -> None:
    old = parse_config({
        "instances": [{"instance_id": "a", "port": 8001}, {"instance_id": "b", "port": 8002}],
        "simulated": [{"name": "s"}],
    })  # fmt: skip
    new = parse_config({
        "instances": [{"instance_id": "b", "port": 9002}, {"instance_id": "c", "port": 8003}],
        "simulated": [{"name": "s"}],
        "scheduling_policy": "fifo",
        "monitor": {"health_interval_s": 5},
    })  # fmt: skip
    plan = plan_reload(old, new).summary()
    assert plan == {
        "added": ["c"], "removed": ["a"], "replaced": ["b"], "scheduling_policy": "fifo",
        "routing_strategy": None, "applied": [], "restart_needed": ["monitor"],
    }  # fmt: skip
    assert plan_reload(new, new).summary()["replaced"] == []

"""The reliability knobs are configurable from YAML and reach the manager and the backend."""

from __future__ import annotations

import pytest

from vllm_control_plane.config import ConfigError, parse_config
from vllm_control_plane.gateway.service import Gateway


def test_timeouts_circuit_and_retry_budget_reach_the_runtime():
    cfg = parse_config(
        {
            "timeouts": {"connect_s": 1.5, "first_token_s": 30, "idle_s": 7},
            "monitor": {"health_timeout_s": 0.5},
            "circuit": {"failure_threshold": 3, "open_s": 0.5, "max_open_s": 4},
            "retry_budget": {"ratio": 0.1, "floor": 2, "window_s": 5},
        }
    )
    gw = Gateway(cfg)
    timeouts = gw.backend.inner.timeouts
    assert (timeouts.connect, timeouts.first_token, timeouts.idle) == (1.5, 30, 7)
    assert timeouts.health == 0.5
    kwargs = cfg.manager_kwargs()
    assert kwargs["circuit_config"].failure_threshold == 3
    assert kwargs["circuit_config"].max_open_s == 4
    assert kwargs["retry_budget"].floor == 2
    assert kwargs["monitor_config"].health_timeout == 0.5


@pytest.mark.parametrize(
    ("data", "where"),
    [
        ({"circuit": {"bogus": 1}}, "circuit.bogus"),
        ({"timeouts": {"idle_s": -1}}, "timeouts.idle_s"),
        ({"retry_budget": {"ratio": -0.5}}, "retry_budget.ratio"),
    ],
)
def test_bad_reliability_keys_name_their_path(data: dict, where: str):
    with pytest.raises(ConfigError, match=where.replace(".", r"\.")):
        parse_config(data)

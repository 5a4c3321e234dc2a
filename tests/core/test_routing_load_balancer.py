"""LoadBalancer: the seed guide's ``cp.load_balancer.select_instance(...)``."""

from __future__ import annotations

import pytest
from routing_testkit import make_fleet, make_instance

from vllm_control_plane.core.load_balancer import LoadBalancer
from vllm_control_plane.types import RequestMetadata


def test_weighted_round_robin_keeps_state_between_calls() -> None:
    lb = LoadBalancer()
    fleet = [make_instance("a", weight=2), make_instance("b", weight=1)]
    picks = [
        lb.select_instance(fleet, algorithm="weighted_round_robin").instance_id for _ in range(6)
    ]
    assert picks == ["a", "b", "a", "a", "b", "a"]


def test_default_is_round_robin_and_accepts_a_mapping() -> None:
    lb = LoadBalancer()
    fleet = {i.instance_id: i for i in make_fleet(3)}
    assert [lb.select_instance(fleet).instance_id for _ in range(4)] == ["i0", "i1", "i2", "i0"]


def test_filters_unhealthy_draining_and_full_instances() -> None:
    sick, draining, full, ok = make_fleet(4)
    sick.is_healthy = False
    draining.is_available = False
    full.active_requests = full.max_concurrent_requests
    lb = LoadBalancer()
    for algorithm in ("round_robin", "least_connections", "locality", "affinity"):
        assert lb.select_instance([sick, draining, full, ok], algorithm=algorithm) is ok
    ok.is_healthy = False
    assert lb.select_instance([sick, draining, full, ok]) is None


def test_unknown_algorithm_lists_valid_ones_even_with_no_instances() -> None:
    with pytest.raises(ValueError, match="weighted_round_robin"):
        LoadBalancer().select_instance([], algorithm="fastest")


def test_request_metadata_drives_affinity() -> None:
    lb = LoadBalancer()
    fleet = make_fleet(5)
    meta = RequestMetadata(request_id="r1", user_id="alice", prompt="hello there")
    homes = {lb.select_instance(fleet, "affinity", meta).instance_id for _ in range(10)}
    assert len(homes) == 1

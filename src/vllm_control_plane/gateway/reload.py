"""Config reload without restart (SIGHUP or ``POST /admin/reload``).

:func:`plan_reload` is pure: it diffs two configs into a :class:`ReloadPlan`. Instances are
matched by id: new ids are added, missing ids are drained and removed (their running requests
finish first), and an entry whose settings changed is replaced — drained, then re-added under the
same id once the old one is gone. Policy and strategy switch live; tenants, API keys, rate limits
and the admin and metrics tokens are swapped at once (a tenant whose rate limit did not change
keeps its bucket, so a reload hands out no fresh burst). Settings that only take effect at
startup (listen address, queue limits, monitor intervals, seed) are reported under
``restart_needed`` rather than half-applied.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vllm_control_plane.config import ControlPlaneConfig, InstanceConfig, SimulatedInstanceConfig

if TYPE_CHECKING:
    from vllm_control_plane.gateway.service import Gateway

log = logging.getLogger(__name__)

AnyInstance = InstanceConfig | SimulatedInstanceConfig
_STARTUP_ONLY = ("server", "limits", "monitor", "seed")


@dataclass
class ReloadPlan:
    """What changes between two configs."""

    add: list[AnyInstance] = field(default_factory=list)
    remove: list[str] = field(default_factory=list)
    replace: list[AnyInstance] = field(default_factory=list)
    policy: str | None = None
    strategy: str | None = None
    restart_needed: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "added": [_id(c) for c in self.add],
            "removed": list(self.remove),
            "replaced": [_id(c) for c in self.replace],
            "scheduling_policy": self.policy,
            "routing_strategy": self.strategy,
            "restart_needed": list(self.restart_needed),
        }


def _id(cfg: AnyInstance) -> str:
    return cfg.name if isinstance(cfg, SimulatedInstanceConfig) else cfg.instance_id


def _entries(config: ControlPlaneConfig) -> dict[str, AnyInstance]:
    out: dict[str, AnyInstance] = {i.instance_id: i for i in config.instances}
    out.update({s.name: s for s in config.simulated})
    return out


def _same(a: AnyInstance, b: AnyInstance) -> bool:
    return type(a) is type(b) and a.model_dump(mode="json") == b.model_dump(mode="json")


def plan_reload(old: ControlPlaneConfig, new: ControlPlaneConfig) -> ReloadPlan:
    """Diff ``old`` against ``new`` (pure)."""
    before, after = _entries(old), _entries(new)
    plan = ReloadPlan()
    plan.add = [cfg for iid, cfg in after.items() if iid not in before]
    plan.remove = [iid for iid in before if iid not in after]
    plan.replace = [
        cfg for iid, cfg in after.items() if iid in before and not _same(before[iid], cfg)
    ]
    if new.scheduling_policy != old.scheduling_policy:
        plan.policy = new.scheduling_policy
    if new.routing_strategy != old.routing_strategy:
        plan.strategy = new.routing_strategy
    plan.restart_needed = [
        key for key in _STARTUP_ONLY
        if getattr(old, key) != getattr(new, key)
    ]  # fmt: skip
    return plan


async def apply_reload(gw: Gateway, plan: ReloadPlan, new: ControlPlaneConfig) -> dict[str, Any]:
    """Carry ``plan`` out on a running gateway; returns the plan's summary."""
    from vllm_control_plane.gateway.auth import Authenticator

    # the limiter carries over: buckets and in-flight counts must survive the swap
    gw.auth = Authenticator(new, limiter=gw.auth.limiter, clock=gw.auth.clock)
    if plan.policy is not None:
        gw.cp.update_policy(plan.policy)
    if plan.strategy is not None:
        gw.cp.router.routing_strategy = plan.strategy
    gw.config = new  # new instances take their prices and drain timeout from it
    for iid in plan.remove:
        gw.remove_instance(iid)
    for cfg in plan.add:
        await gw.add_instance(cfg)
    for cfg in plan.replace:
        gw.remove_instance(_id(cfg))
        gw.spawn(_readd_when_gone(gw, cfg))
    if plan.restart_needed:
        log.warning("reload: %s changed; restart to apply", ", ".join(plan.restart_needed))
    return plan.summary()


async def _readd_when_gone(gw: Gateway, cfg: AnyInstance) -> None:
    """Re-register a replaced instance once its old incarnation has drained away."""
    iid = _id(cfg)
    deadline = time.monotonic() + gw.config.limits.drain_timeout_s + 10.0
    while time.monotonic() < deadline:
        gone = all(i.instance_id != iid for i in gw.cp.get_instances())
        if gone and iid not in gw.fleet:
            await gw.add_instance(cfg)
            return
        await asyncio.sleep(0.05)
    log.error("reload: instance %s did not drain in time; not re-added", iid)

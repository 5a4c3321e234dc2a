"""Config reload without restart (SIGHUP or ``POST /admin/reload``).

:func:`plan_reload` is pure: it diffs two configs into a :class:`ReloadPlan`. Instances are
matched by id: new ids are added, missing ids are drained and removed (their running requests
finish first), and an entry whose settings changed is replaced — drained, then re-added under the
same id once the old one is gone. Policy and strategy switch live; tenants, API keys, rate limits
and the admin and metrics tokens are swapped at once (a tenant whose rate limit did not change
keeps its bucket, so a reload hands out no fresh burst).

Every other setting is either applied live (reported under ``applied``) or reported under
``restart_needed`` — never silently dropped, never half-applied. :data:`RELOAD_RULES` says which,
for every key of :class:`ControlPlaneConfig` (a key missing there counts as restart-only):

- live: ``timeouts`` (requests sent from now on; connect timeout of new connections),
  ``circuit`` (the breakers' thresholds and cooldowns), ``retry_budget`` (the window's counts
  are kept), ``limits`` queue caps, retries, backoff, ``hard_deadlines`` and
  ``drain_timeout_s``, ``server.shutdown_grace_s`` and ``server.retry_after_s``;
- restart: ``server`` host, port and body limit, ``limits.aging_s``, ``saturation_*``,
  ``history_size`` and ``adaptive_concurrency`` (built into the core's queue order, fleet and
  controllers), ``monitor`` (loops and thresholds), ``seed``, and ``prices`` (an instance's
  price is fixed when it is registered: instances added or replaced from now on get the new
  prices, the running ones keep theirs until a restart).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from vllm_control_plane.config import ControlPlaneConfig, InstanceConfig, SimulatedInstanceConfig

if TYPE_CHECKING:
    from vllm_control_plane.gateway.service import Gateway

log = logging.getLogger(__name__)

AnyInstance = InstanceConfig | SimulatedInstanceConfig

LIVE, RESTART, OWN = "live", "restart", "own"
Rule = str | dict[str, str]

# How a change of each config key is carried out: LIVE (applied, listed under ``applied``),
# RESTART (listed under ``restart_needed``), OWN (its own entry in the plan: instances, policy,
# strategy). A dict rules a section field by field. Keys missing here count as RESTART.
RELOAD_RULES: dict[str, Rule] = {
    "server": {
        "host": RESTART, "port": RESTART,
        "max_body_bytes": RESTART,  # the HTTP server's own body limit is set when it starts
        "shutdown_grace_s": LIVE, "retry_after_s": LIVE,  # read from the config when used
    },
    "admin": LIVE,
    "tenants": LIVE,
    "scheduling_policy": OWN,
    "routing_strategy": OWN,
    "limits": {
        "max_queued": LIVE, "max_queued_per_priority": LIVE, "max_retries": LIVE,
        "retry_backoff_s": LIVE, "hard_deadlines": LIVE, "drain_timeout_s": LIVE,
        "aging_s": RESTART,  # in the keys the queue is ordered by
        "saturation_waiting": RESTART, "saturation_kv": RESTART,  # held by the core's fleet
        "history_size": RESTART,  # sizes the manager's result history
        "adaptive_concurrency": RESTART,  # builds the core's concurrency controller
    },
    "monitor": RESTART,
    "timeouts": LIVE,
    "circuit": LIVE,
    "retry_budget": LIVE,
    "prices": RESTART,  # baked into each instance (and its cost meter) when it registers
    "instances": OWN,
    "simulated": OWN,
    "seed": RESTART,
}  # fmt: skip

# CoreLimits fields the core reads through ``core.limits`` at each use (admission, retry).
_LIVE_CORE_LIMITS = ("max_queued", "max_queued_per_priority", "max_retries", "retry_backoff_s",
                     "hard_deadlines")  # fmt: skip


@dataclass
class ReloadPlan:
    """What changes between two configs."""

    add: list[AnyInstance] = field(default_factory=list)
    remove: list[str] = field(default_factory=list)
    replace: list[AnyInstance] = field(default_factory=list)
    policy: str | None = None
    strategy: str | None = None
    applied: list[str] = field(default_factory=list)
    """Changed settings applied live (a section, or ``section.field``)."""
    restart_needed: list[str] = field(default_factory=list)
    """Changed settings that take effect only after a restart."""

    def summary(self) -> dict[str, Any]:
        return {
            "added": [_id(c) for c in self.add],
            "removed": list(self.remove),
            "replaced": [_id(c) for c in self.replace],
            "scheduling_policy": self.policy,
            "routing_strategy": self.strategy,
            "applied": list(self.applied),
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
    for key in ControlPlaneConfig.model_fields:
        before_value, after_value = getattr(old, key), getattr(new, key)
        if before_value == after_value:
            continue
        rule = RELOAD_RULES.get(key, RESTART)
        if isinstance(rule, dict):
            assert isinstance(before_value, BaseModel) and isinstance(after_value, BaseModel)
            for name in type(after_value).model_fields:
                if getattr(before_value, name) != getattr(after_value, name):
                    _classify(plan, f"{key}.{name}", rule.get(name, RESTART))
        else:
            _classify(plan, key, rule)
    return plan


def _classify(plan: ReloadPlan, key: str, rule: str) -> None:
    if rule == LIVE:
        plan.applied.append(key)
    elif rule != OWN:
        plan.restart_needed.append(key)


async def apply_reload(gw: Gateway, plan: ReloadPlan, new: ControlPlaneConfig) -> dict[str, Any]:
    """Carry ``plan`` out on a running gateway; returns the plan's summary."""
    from vllm_control_plane.gateway.auth import Authenticator

    # the limiter carries over: buckets and in-flight counts must survive the swap
    gw.auth = Authenticator(new, limiter=gw.auth.limiter, clock=gw.auth.clock)
    if plan.policy is not None:
        gw.cp.update_policy(plan.policy)
    if plan.strategy is not None:
        gw.cp.router.routing_strategy = plan.strategy
    _apply_settings(gw, plan, new)
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


def _apply_settings(gw: Gateway, plan: ReloadPlan, new: ControlPlaneConfig) -> None:
    """Carry out the live settings of ``plan.applied`` on the running control plane."""
    cp = gw.cp
    sections = {key.partition(".")[0] for key in plan.applied}
    if "timeouts" in sections:
        inner = getattr(gw.backend, "inner", gw.backend)
        set_timeouts = getattr(inner, "set_timeouts", None)
        current = getattr(inner, "timeouts", None)
        if set_timeouts is None or current is None:  # a backend without run-time timeouts
            plan.applied.remove("timeouts")
            plan.restart_needed.append("timeouts")
        else:  # (health and scrape timeouts belong to the monitor section)
            t = new.timeouts
            fresh = dataclasses.replace(current, connect=t.connect_s,
                                        first_token=t.first_token_s, idle=t.idle_s)  # fmt: skip
            set_timeouts(fresh)
    if "circuit" in sections:
        cp.breakers.config = new.circuit.to_runtime()  # read at every decision
    if "retry_budget" in sections:
        cp.retry_budget.reconfigure(new.retry_budget.to_runtime())
    if "limits" in sections:
        fresh = new.limits.to_core()
        live = {name: getattr(fresh, name) for name in _LIVE_CORE_LIMITS}
        cp.core.limits = dataclasses.replace(cp.core.limits, **live)
        cp.drain_timeout_s = new.limits.drain_timeout_s


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

"""The instance registry of the core: who serves which model, and who can take work now.

How it works: instances are indexed by model. An instance is *ready* when it is healthy,
available (not draining), below ``max_concurrent_requests`` and not saturated by its scraped
engine queue or KV usage; ready instances are kept in a per-model dict and counted per
``(model, hint)`` class, updated by :meth:`Fleet.refresh` whenever one of those facts changes, so
"can this class dispatch at all?" is a dict look-up. Removed instances that still run requests
are *retired*: invisible to routing, kept until their last request ends so accounting closes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from vllm_control_plane.core.limits import CoreLimits
from vllm_control_plane.types import ExecutionInstance, ParallelismType


def matches_hint(inst: ExecutionInstance, hint: ParallelismType | None) -> bool:
    """Does ``inst`` use the parallelism the request hinted at?

    TP/PP/DP/HYBRID follow the instance's sizes; expert parallelism has no size field, so an
    instance declares it with the label ``expert_parallel: "true"``.
    """
    if hint is None or hint in inst.parallelism_types:
        return True
    flag = inst.labels.get("expert_parallel", "").strip().lower()
    return hint is ParallelismType.EXPERT_PARALLEL and flag in ("1", "true", "yes")


def _hint_classes(inst: ExecutionInstance) -> list[ParallelismType | None]:
    return [h for h in (None, *ParallelismType) if matches_hint(inst, h)]


class Fleet:
    """Registered instances and their readiness."""

    def __init__(self, limits: CoreLimits) -> None:
        self.limits = limits
        self._all: dict[str, ExecutionInstance] = {}
        self._retired: dict[str, ExecutionInstance] = {}
        self._by_model: dict[str, dict[str, ExecutionInstance]] = {}
        self._ready: dict[str, dict[str, ExecutionInstance]] = {}
        self._ready_count: dict[tuple[str, ParallelismType | None], int] = {}
        self._classes: dict[str, list[ParallelismType | None]] = {}
        # Called when an instance becomes ready (the queue un-parks requests waiting for it).
        self.on_ready: Callable[[ExecutionInstance], None] | None = None

    # -- registry -----------------------------------------------------------------------------
    def add(self, inst: ExecutionInstance) -> None:
        iid = inst.instance_id
        if iid in self._all or iid in self._retired:
            state = "registered" if iid in self._all else "still finishing requests"
            raise ValueError(f"instance {iid!r} is already {state}")
        self._all[iid] = inst
        self._by_model.setdefault(inst.model_name, {})[iid] = inst
        self._ready.setdefault(inst.model_name, {})
        self._classes[iid] = _hint_classes(inst)
        self.refresh(inst)

    def remove(self, instance_id: str, *, busy: bool) -> ExecutionInstance:
        """Unregister; a ``busy`` instance is retired until :meth:`forget`."""
        inst = self.get(instance_id)
        self._set_ready(inst, False)
        del self._all[instance_id]
        model = self._by_model[inst.model_name]
        del model[instance_id]
        if not model:
            del self._by_model[inst.model_name]
            del self._ready[inst.model_name]
        if busy:
            self._retired[instance_id] = inst
        return inst

    def forget(self, instance_id: str) -> None:
        self._retired.pop(instance_id, None)
        self._classes.pop(instance_id, None)

    def get(self, instance_id: str) -> ExecutionInstance:
        inst = self._all.get(instance_id)
        if inst is None:
            known = ", ".join(sorted(self._all)) or "none"
            raise KeyError(f"unknown instance {instance_id!r}; registered: {known}")
        return inst

    def lookup(self, instance_id: str) -> ExecutionInstance | None:
        """Registered or retired instance, None if neither."""
        return self._all.get(instance_id) or self._retired.get(instance_id)

    def is_retired(self, instance_id: str) -> bool:
        return instance_id in self._retired

    def instances(self) -> list[ExecutionInstance]:
        return list(self._all.values())

    def models(self) -> list[str]:
        """Served models in order of first registration (the first is the default)."""
        return list(self._by_model)

    def serving(self, model: str, hint: ParallelismType | None = None) -> list[ExecutionInstance]:
        """Registered instances of ``model`` matching ``hint``, whatever their health."""
        return [i for i in self._by_model.get(model, {}).values() if matches_hint(i, hint)]

    # -- readiness ----------------------------------------------------------------------------
    def usable(
        self, model: str, hint: ParallelismType | None, excluded: Iterable[str] = ()
    ) -> list[ExecutionInstance]:
        """Healthy, available instances (full or saturated ones included)."""
        skip = set(excluded)
        return [
            i
            for i in self._by_model.get(model, {}).values()
            if i.is_healthy
            and i.is_available
            and i.instance_id not in skip
            and matches_hint(i, hint)
        ]

    def ready(
        self, model: str, hint: ParallelismType | None, excluded: set[str]
    ) -> list[ExecutionInstance]:
        """Instances that can take a dispatch now."""
        insts = self._ready.get(model)
        if not insts:
            return []
        if hint is None and not excluded:
            return list(insts.values())
        return [
            i for i in insts.values() if i.instance_id not in excluded and matches_hint(i, hint)
        ]

    def is_ready(self, instance_id: str) -> bool:
        inst = self._all.get(instance_id)
        return inst is not None and instance_id in self._ready[inst.model_name]

    def has_ready(self, cls: tuple[str, ParallelismType | None]) -> bool:
        return self._ready_count.get(cls, 0) > 0

    def refresh(self, inst: ExecutionInstance) -> None:
        """Re-evaluate readiness after any change of health, load or availability."""
        if inst.instance_id in self._all:
            self._set_ready(inst, self._is_ready(inst))

    def _is_ready(self, inst: ExecutionInstance) -> bool:
        lim = self.limits
        return (
            inst.is_healthy
            and inst.is_available
            and inst.active_requests < inst.max_concurrent_requests
            and inst.num_requests_waiting <= lim.saturation_waiting
            and inst.kv_cache_usage <= lim.saturation_kv
        )

    def _set_ready(self, inst: ExecutionInstance, ready: bool) -> None:
        model = self._ready[inst.model_name]
        if ready == (inst.instance_id in model):
            return
        step = 1 if ready else -1
        if ready:
            model[inst.instance_id] = inst
        else:
            del model[inst.instance_id]
        for hint in self._classes[inst.instance_id]:
            key = (inst.model_name, hint)
            self._ready_count[key] = self._ready_count.get(key, 0) + step
        if ready and self.on_ready is not None:
            self.on_ready(inst)

    # -- signals ------------------------------------------------------------------------------
    def utilisation(self) -> float:
        """Our active requests over the concurrency budget of healthy, available instances."""
        up = [i for i in self._all.values() if i.is_healthy and i.is_available]
        capacity = sum(i.max_concurrent_requests for i in up)
        return sum(i.active_requests for i in up) / capacity if capacity else 1.0

    def available_count(self) -> int:
        return sum(1 for i in self._all.values() if i.is_healthy and i.is_available)

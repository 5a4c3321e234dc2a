"""The instance registry of the core: who serves which model, and who can take work now.

How it works: instances are indexed by model. An instance is *ready* when it is healthy,
available (not draining), below ``max_concurrent_requests`` and not saturated by its scraped
engine queue or KV usage; ready instances are kept in a per-model dict and counted per
``(model, hint)`` class, updated by :meth:`Fleet.refresh` whenever one of those facts changes, so
"can this class dispatch at all?" is a dict look-up. Removed instances that still run requests
are *retired*: invisible to routing, kept until their last request ends so accounting closes.

Answers asked on every submission and dispatch are cached and invalidated explicitly, never by
time: ``serving`` (per model and hint) changes only when an instance is added or removed;
``usable`` also when one's health or availability flips; the hint-free ``ready`` tuple when an
instance enters or leaves the ready set. Utilisation and the available count are running sums
kept by :meth:`refresh`. Cached answers are tuples, so no caller can edit them in place.

Every change also gives the instance a new *stamp* from a fleet-wide counter (``version``):
a prediction made for an instance stays valid while its stamp is unchanged, which is what
:class:`~vllm_control_plane.core.predictions.PredictionCache` relies on. All of this rests on
one rule the core already states: once registered, an instance's live fields change only
through the core (which calls :meth:`refresh` or :meth:`touch`), and its static fields (model,
parallelism, labels) not at all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from vllm_control_plane.core.limits import CoreLimits
from vllm_control_plane.types import ExecutionInstance, ParallelismType

Hint = ParallelismType | None
_LOG_LIMIT = 4096  # recent changes remembered for :meth:`Fleet.changed_since`


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
        # Cached answers (see module docstring for what invalidates each).
        self._serving: dict[tuple[str, Hint], tuple[ExecutionInstance, ...]] = {}
        self._usable: dict[tuple[str, Hint], tuple[ExecutionInstance, ...]] = {}
        self._ready_all: dict[str, tuple[ExecutionInstance, ...]] = {}
        # What each registered instance last contributed to the running sums: (up, active).
        self._seen: dict[str, tuple[bool, int]] = {}
        self._up_count = 0
        self._up_active = 0
        self._up_capacity = 0
        self.stamps: dict[str, int] = {}  # instance id -> value of ``version`` at its last change
        self.version = 0  # bumped by every change of any instance
        # Which instance each recent version changed: _log[k] is version _log_base + k.
        self._log: list[str] = []
        self._log_base = 1
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
        self._seen[iid] = (False, 0)
        self._registry_changed(inst.model_name)
        self.refresh(inst)

    def remove(self, instance_id: str, *, busy: bool) -> ExecutionInstance:
        """Unregister; a ``busy`` instance is retired until :meth:`forget`."""
        inst = self.get(instance_id)
        self._set_ready(inst, False)
        self._account(instance_id, False, 0)
        del self._seen[instance_id]
        self._bump(instance_id)
        del self.stamps[instance_id]
        del self._all[instance_id]
        model = self._by_model[inst.model_name]
        del model[instance_id]
        if not model:
            del self._by_model[inst.model_name]
            del self._ready[inst.model_name]
        self._registry_changed(inst.model_name)
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

    def serves(self, model: str) -> bool:
        return model in self._by_model

    def default_model(self) -> str:
        """The model of requests that name none: the first registered ('' when none is)."""
        return next(iter(self._by_model), "")

    def serving(
        self, model: str, hint: ParallelismType | None = None
    ) -> tuple[ExecutionInstance, ...]:
        """Registered instances of ``model`` matching ``hint``, whatever their health."""
        key = (model, hint)
        cached = self._serving.get(key)
        if cached is None:
            insts = self._by_model.get(model, {}).values()
            cached = self._serving[key] = tuple(i for i in insts if matches_hint(i, hint))
        return cached

    def _registry_changed(self, model: str) -> None:
        self._drop_cached(model, self._serving)
        self._drop_cached(model, self._usable)
        self._ready_all.pop(model, None)

    @staticmethod
    def _drop_cached(
        model: str, cache: dict[tuple[str, Hint], tuple[ExecutionInstance, ...]]
    ) -> None:
        for key in [k for k in cache if k[0] == model]:
            del cache[key]

    # -- readiness ----------------------------------------------------------------------------
    def usable(
        self, model: str, hint: ParallelismType | None, excluded: Iterable[str] = ()
    ) -> tuple[ExecutionInstance, ...]:
        """Healthy, available instances (full or saturated ones included)."""
        key = (model, hint)
        cached = self._usable.get(key)
        if cached is None:
            cached = self._usable[key] = tuple(
                i for i in self.serving(model, hint) if i.is_healthy and i.is_available
            )
        if not excluded:
            return cached
        skip = set(excluded)
        return tuple(i for i in cached if i.instance_id not in skip)

    def ready(
        self, model: str, hint: ParallelismType | None, excluded: set[str]
    ) -> tuple[ExecutionInstance, ...]:
        """Instances that can take a dispatch now."""
        insts = self._ready.get(model)
        if not insts:
            return ()
        if hint is None and not excluded:
            cached = self._ready_all.get(model)
            if cached is None:
                cached = self._ready_all[model] = tuple(insts.values())
            return cached
        return tuple(
            i for i in insts.values() if i.instance_id not in excluded and matches_hint(i, hint)
        )

    def is_ready(self, instance_id: str) -> bool:
        inst = self._all.get(instance_id)
        return inst is not None and instance_id in self._ready[inst.model_name]

    def has_ready(self, cls: tuple[str, ParallelismType | None]) -> bool:
        return self._ready_count.get(cls, 0) > 0

    def refresh(self, inst: ExecutionInstance) -> None:
        """Re-evaluate readiness after any change of health, load or availability."""
        iid = inst.instance_id
        if iid not in self._all:
            return
        self._bump(iid)
        up = inst.is_healthy and inst.is_available
        seen = self._seen[iid]
        if seen[0] != up:
            self._drop_cached(inst.model_name, self._usable)
        if seen[0] != up or seen[1] != inst.active_requests:
            self._account(iid, up, inst.active_requests)
        self._set_ready(inst, self._is_ready(inst))

    def touch(self, instance_id: str) -> None:
        """Something a prediction for the instance depends on changed (e.g. its calibration)."""
        if instance_id in self.stamps:
            self._bump(instance_id)

    def changed_since(self, version: int) -> list[str] | None:
        """Ids of the instances changed after ``version`` (repeats possible), or None when that
        is too long ago to tell."""
        start = version + 1 - self._log_base
        return self._log[start:] if start >= 0 else None

    def _bump(self, instance_id: str) -> None:
        self.version += 1
        self.stamps[instance_id] = self.version
        log = self._log
        log.append(instance_id)
        if len(log) > _LOG_LIMIT:  # forget the older half: older versions become "too long ago"
            cut = len(log) // 2
            del log[:cut]
            self._log_base += cut

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
        self._ready_all.pop(inst.model_name, None)
        for hint in self._classes[inst.instance_id]:
            key = (inst.model_name, hint)
            self._ready_count[key] = self._ready_count.get(key, 0) + step
        if ready and self.on_ready is not None:
            self.on_ready(inst)

    def _account(self, instance_id: str, up: bool, active: int) -> None:
        """Move the instance's share of the running sums from what it was to (up, active)."""
        was_up, was_active = self._seen[instance_id]
        cap = self._all[instance_id].max_concurrent_requests
        if was_up:
            self._up_count -= 1
            self._up_active -= was_active
            self._up_capacity -= cap
        if up:
            self._up_count += 1
            self._up_active += active
            self._up_capacity += cap
        self._seen[instance_id] = (up, active)

    # -- signals ------------------------------------------------------------------------------
    def utilisation(self) -> float:
        """Our active requests over the concurrency budget of healthy, available instances."""
        capacity = self._up_capacity
        return self._up_active / capacity if capacity else 1.0

    def available_count(self) -> int:
        return self._up_count

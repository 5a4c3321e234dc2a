"""Predictions of the core's estimator, reused until the instance they describe changes.

Why: a policy or strategy that compares a request across a large fleet asks for one prediction
per instance on every placement (64 instances → 64 estimator calls), and several requests may
be placed, deferred or parked within one dispatch call while no instance changes at all.

How it works: :class:`PredictionCache` wraps an estimator that declares
``predictions_follow_instance_state = True`` — its prediction for an instance is a function of
the request's token counts, the instance object and the live fields the core maintains, plus
calibration state that changes only in its ``observe`` / ``forget``, which bump its
``calibration_epoch``. The fleet gives each instance a new stamp on every change
(:attr:`Fleet.stamps`, :meth:`Fleet.refresh`, :meth:`Fleet.touch`), so a prediction cached
with the instance's stamp is exactly what the estimator would answer while the stamp holds:

* per ``(prompt_tokens, output_tokens)``, a table ``instance id → (stamp, instance,
  prediction)``: a look-up and two comparisons instead of an estimator call;
* :meth:`predict_many` over the very same tuple of instances (the fleet hands out cached
  tuples) with no change anywhere in the fleet since (``Fleet.version``) returns a copy of the
  last answer without touching the instances at all.

Calibration the core feeds through :meth:`observe` re-stamps just that instance; a change of
``calibration_epoch`` the cache did not see (someone calibrated the estimator directly) drops
everything. Instances the fleet does not stamp (unregistered) are passed straight through.
Both tables are bounded; when full they are cleared, never consulted stale.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from vllm_control_plane.core.fleet import Fleet
from vllm_control_plane.core.interfaces import Estimator, Prediction
from vllm_control_plane.types import ExecutionInstance

_MAX_SHAPES = 1024  # (prompt, output) pairs with a table; 64 instances each at most

_Shape = tuple[int, int]
_Entry = tuple[int, ExecutionInstance, Prediction]  # stamp, the instance object, its prediction


@dataclass(slots=True)
class _Answer:
    """The last :meth:`PredictionCache.predict_many` answer for one request shape."""

    instances: Sequence[ExecutionInstance]  # a tuple, recognised by identity
    index: dict[str, ExecutionInstance]
    version: int  # ``Fleet.version`` the predictions are valid at
    predictions: dict[str, Prediction]


def cacheable(estimator: object) -> bool:
    """Does ``estimator`` promise the contract :class:`PredictionCache` relies on?"""
    return bool(getattr(estimator, "predictions_follow_instance_state", False))


class PredictionCache:
    """An :class:`~vllm_control_plane.core.interfaces.Estimator` in front of a cacheable one.

    Other attributes (``predict_floor``, ``calibration``, ``describe``, ...) are the wrapped
    estimator's, so code that probes for optional estimator methods sees the same set.
    """

    def __init__(self, estimator: Estimator, fleet: Fleet) -> None:
        self.estimator = estimator
        self._fleet = fleet
        self._stamps = fleet.stamps
        self._tables: dict[_Shape, dict[str, _Entry]] = {}
        self._many: dict[_Shape, _Answer] = {}
        self._epoch = self._estimator_epoch()

    def __getattr__(self, name: str) -> Any:
        if name == "estimator":  # not set yet (e.g. during copy): no recursion
            raise AttributeError(name)
        return getattr(self.estimator, name)

    # -- predictions --------------------------------------------------------------------------
    def predict(
        self, instance: ExecutionInstance, prompt_tokens: int, output_tokens: int
    ) -> Prediction:
        self._check_epoch()
        shape = (prompt_tokens, output_tokens)
        return self._predict(self._table(shape), shape, instance)

    def predict_many(
        self, instances: Sequence[ExecutionInstance], prompt_tokens: int, output_tokens: int
    ) -> dict[str, Prediction]:
        """:meth:`predict` for each instance, keyed by instance id (in ``instances`` order)."""
        self._check_epoch()
        shape = (prompt_tokens, output_tokens)
        table = self._table(shape)
        last = self._many.get(shape)
        if last is not None and last.instances is instances:
            out = self._update(last, table, shape)
        else:
            out = self._predict_all(instances, table, shape)
            if isinstance(instances, tuple):  # immutable: safe to recognise by identity later
                if len(self._many) >= _MAX_SHAPES:
                    self._many.clear()
                index = {i.instance_id: i for i in instances}
                self._many[shape] = _Answer(instances, index, self._fleet.version, out)
        return dict(out)

    def _predict_all(
        self, instances: Sequence[ExecutionInstance], table: dict[str, _Entry], shape: _Shape
    ) -> dict[str, Prediction]:
        stamps, predict = self._stamps, self._predict
        out: dict[str, Prediction] = {}
        for inst in instances:
            iid = inst.instance_id
            hit = table.get(iid)
            if hit is not None and hit[1] is inst and hit[0] == stamps.get(iid):
                out[iid] = hit[2]
            else:
                out[iid] = predict(table, shape, inst)
        return out

    def _update(
        self, last: _Answer, table: dict[str, _Entry], shape: _Shape
    ) -> dict[str, Prediction]:
        """Bring the last answer over the same instances up to date: re-predict only the
        instances the fleet changed since (all of them when that is too long ago)."""
        version = self._fleet.version
        if last.version == version:
            return last.predictions
        changed = self._fleet.changed_since(last.version)
        if changed is None or len(changed) > len(last.index):
            last.predictions = self._predict_all(last.instances, table, shape)
        else:
            preds, index = last.predictions, last.index
            for iid in changed:
                inst = index.get(iid)
                if inst is not None:
                    preds[iid] = self._predict(table, shape, inst)
        last.version = version
        return last.predictions

    def _predict(
        self, table: dict[str, _Entry], shape: _Shape, inst: ExecutionInstance
    ) -> Prediction:
        iid = inst.instance_id
        stamp = self._stamps.get(iid)
        hit = table.get(iid)
        if hit is not None and hit[1] is inst and hit[0] == stamp:
            return hit[2]
        pred = self.estimator.predict(inst, shape[0], shape[1])
        if stamp is not None:
            table[iid] = (stamp, inst, pred)
        return pred

    def _table(self, shape: _Shape) -> dict[str, _Entry]:
        table = self._tables.get(shape)
        if table is None:
            if len(self._tables) >= _MAX_SHAPES:
                self._tables.clear()
            table = self._tables[shape] = {}
        return table

    # -- calibration --------------------------------------------------------------------------
    def observe(self, instance_id: str, predicted: Prediction, **observed: float | None) -> None:
        """Calibrate the wrapped estimator and re-stamp just that instance."""
        before = self._estimator_epoch()
        self.estimator.observe(instance_id, predicted, **observed)  # type: ignore[attr-defined]
        if before == self._epoch:  # nothing else changed it since we last looked
            self._epoch = self._estimator_epoch()
        self._fleet.touch(instance_id)

    def _estimator_epoch(self) -> int:
        return int(getattr(self.estimator, "calibration_epoch", 0))

    def _check_epoch(self) -> None:
        epoch = self._estimator_epoch()
        if epoch != self._epoch:
            self._tables.clear()
            self._many.clear()
            self._epoch = epoch

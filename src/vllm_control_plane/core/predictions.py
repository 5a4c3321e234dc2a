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
  tuples) starts from its last answer: unchanged fleet (``Fleet.version``) → a copy of it;
  otherwise only the instances changed since (``Fleet.changed_since``) are predicted again.

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

_MAX_SHAPES = 1024  # (prompt, output) pairs with a table (one entry per instance each)
_MAX_ANSWERS = 256  # remembered predict_many answers (least recently used dropped first)
_MIN_REMEMBERED = 16  # predict_many answers over fewer instances are not worth remembering

_Shape = tuple[int, int]
_Entry = tuple[int, ExecutionInstance, Prediction]  # stamp, the instance object, its prediction


@dataclass(slots=True)
class _Answer:
    """The last :meth:`PredictionCache.predict_many` answer for one request shape."""

    instances: Sequence[ExecutionInstance]  # a tuple, recognised by identity
    index: dict[str, ExecutionInstance] | None  # by id; built when first needed
    version: int  # ``Fleet.version`` the predictions are valid at
    predictions: dict[str, Prediction]


def cacheable(estimator: object) -> bool:
    """Does ``estimator`` promise the contract :class:`PredictionCache` relies on?"""
    promised = getattr(estimator, "predictions_follow_instance_state", False)
    return bool(promised) and isinstance(getattr(estimator, "calibration_epoch", None), int)


class PredictionCache:
    """An :class:`~vllm_control_plane.core.interfaces.Estimator` in front of a cacheable one.

    Other attributes (``predict_floor``, ``calibration``, ``describe``, ...) are the wrapped
    estimator's, so code that probes for optional estimator methods sees the same set.
    """

    def __init__(self, estimator: Estimator, fleet: Fleet) -> None:
        if not cacheable(estimator):
            raise TypeError(f"{type(estimator).__name__} does not promise cacheable predictions")
        self.estimator = estimator
        self._fleet = fleet
        self._stamps = fleet.stamps
        self._tables: dict[_Shape, dict[str, _Entry]] = {}
        # Last answers by (shape, id of the instance tuple), oldest use first.
        self._many: dict[tuple[_Shape, int], _Answer] = {}
        self._epoch: int = estimator.calibration_epoch  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> Any:
        if name == "estimator":  # not set yet (e.g. during copy): no recursion
            raise AttributeError(name)
        return getattr(self.estimator, name)

    # -- predictions --------------------------------------------------------------------------
    def predict(
        self, instance: ExecutionInstance, prompt_tokens: int, output_tokens: int
    ) -> Prediction:
        if self.estimator.calibration_epoch != self._epoch:  # type: ignore[attr-defined]
            self._reset()
        shape = (prompt_tokens, output_tokens)
        return self._predict(self._table(shape), shape, instance)

    def predict_many(
        self, instances: Sequence[ExecutionInstance], prompt_tokens: int, output_tokens: int
    ) -> dict[str, Prediction]:
        """:meth:`predict` for each instance, keyed by instance id (in ``instances`` order)."""
        if self.estimator.calibration_epoch != self._epoch:  # type: ignore[attr-defined]
            self._reset()
        shape = (prompt_tokens, output_tokens)
        table = self._table(shape)
        # Lists are mutable (not recognisable by identity); a few instances are cheap anyway.
        if len(instances) < _MIN_REMEMBERED or not isinstance(instances, tuple):
            return self._predict_all(instances, table, shape)
        key = (shape, id(instances))
        last = self._many.pop(key, None)  # re-inserted below: most recently used last
        if last is not None and last.instances is instances:
            out = self._update(last, table, shape)
        else:
            out = self._predict_all(instances, table, shape)
            last = _Answer(instances, None, self._fleet.version, out)
            if len(self._many) >= _MAX_ANSWERS:
                del self._many[next(iter(self._many))]
        self._many[key] = last  # holds the tuple, so its id cannot be reused meanwhile
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
        if changed is None or len(changed) > len(last.instances):
            last.predictions = self._predict_all(last.instances, table, shape)
        else:
            if last.index is None:
                last.index = {i.instance_id: i for i in last.instances}
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
        est: Any = self.estimator
        before = est.calibration_epoch
        est.observe(instance_id, predicted, **observed)
        if before == self._epoch:  # nothing else changed it since we last looked
            self._epoch = est.calibration_epoch
        self._fleet.touch(instance_id)

    def _reset(self) -> None:
        """The estimator was calibrated behind our back: nothing cached can be trusted."""
        self._tables.clear()
        self._many.clear()
        self._epoch = self.estimator.calibration_epoch  # type: ignore[attr-defined]

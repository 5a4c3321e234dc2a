"""``slo_aware``: least slack first; instances that can meet the deadline.

Order: slack at time ``t`` is ``deadline − t − predicted service``; ``t`` is common to all, so
the static key is ``deadline − predicted service`` (the best prediction over the instances
serving the request, taken once when it is first needed). With a TTFT SLO as well, the tighter
of the two slacks counts. A request without SLO is keyed as if its deadline were
``no_slo_slack_s`` after submission, so it is served when it truly has the least slack and
cannot starve behind a stream of deadline traffic.

Placement: once some instance with room is predicted to meet the deadline(s) under its current
load, the request may go to any instance with room whose hardware could meet them *idle*; the
routing strategy chooses among those. Load differences are the strategy's to weigh — it may know
what the estimator does not (a prefix-aware strategy knows where the prompt is cached, which
makes a busier instance the faster one: filtering on load-based predictions sent multi-turn
traffic away from its cached histories and collapsed attainment). When none with room can meet
the deadline, but a full one could, the request waits (Defer). When no instance could meet it at
all — the rule for late requests:

* hard deadline (``submit(hard_deadline=True)`` or ``CoreLimits.hard_deadlines``): TIMEOUT now,
  with the prediction in the reason — running it would only waste GPU time;
* otherwise it is demoted behind every request that can still make it and, when its turn
  comes, placed on any instance with room (best effort; it counts as an SLO violation).

Admission rejects a hard-deadline request whose best prediction already misses its deadline.
"""

from __future__ import annotations

from vllm_control_plane.core.interfaces import Prediction
from vllm_control_plane.core.lifecycle import RequestRecord
from vllm_control_plane.core.policies.base import (
    Candidates,
    Defer,
    Demote,
    Drop,
    Instances,
    Placement,
    SchedulingPolicy,
    Verdict,
)
from vllm_control_plane.core.queue import QueueKey
from vllm_control_plane.types import ExecutionInstance, RequestStatus


def meets_deadlines(rec: RequestRecord, pred: Prediction, now: float) -> bool:
    """Would ``rec`` dispatched at ``now`` meet its end-to-end and TTFT deadlines?"""
    deadline, ttft_deadline = rec.deadline_at, rec.ttft_deadline_at
    if deadline is not None and now + pred.latency_ms / 1e3 > deadline:
        return False
    if not meets_tpot(rec, pred):
        return False
    return ttft_deadline is None or now + pred.ttft_ms / 1e3 <= ttft_deadline


def meets_tpot(rec: RequestRecord, pred: Prediction) -> bool:
    """Is the predicted time per output token within the request's TPOT SLO (if any)?"""
    slo = rec.request.tpot_slo_ms
    return slo is None or pred.tpot_ms <= slo


def remaining_ms(rec: RequestRecord, now: float) -> tuple[float, float]:
    """(ms left for the whole request, ms left for its first token); inf where no SLO."""
    inf = float("inf")
    deadline, ttft_deadline = rec.deadline_at, rec.ttft_deadline_at
    return (
        inf if deadline is None else (deadline - now) * 1e3,
        inf if ttft_deadline is None else (ttft_deadline - now) * 1e3,
    )


def feasible(
    rec: RequestRecord, instances: Instances, preds: dict[str, Prediction], now: float
) -> list[ExecutionInstance]:
    """The instances on which ``rec`` dispatched now is predicted to meet its deadlines."""
    lat, ttft = remaining_ms(rec, now)
    tpot = rec.request.tpot_slo_ms  # read once: this loop runs over the whole fleet
    out = []
    for inst in instances:
        p = preds[inst.instance_id]
        if p.latency_ms <= lat and p.ttft_ms <= ttft and (tpot is None or p.tpot_ms <= tpot):
            out.append(inst)
    return out


def has_deadline(rec: RequestRecord) -> bool:
    return rec.request.slo_deadline_ms is not None or rec.request.ttft_slo_ms is not None


class SloAwarePolicy(SchedulingPolicy):
    name = "slo_aware"

    def order_key(self, rec: RequestRecord) -> QueueKey:
        if rec.demoted:
            return (1, rec.submitted_at)
        best = self.ctx.best(rec) if has_deadline(rec) else None
        if best is None:
            return (0, rec.submitted_at + self.ctx.limits.no_slo_slack_s)
        best_ttft_ms, best_latency_ms = best
        slacks = []
        if rec.deadline_at is not None:
            slacks.append(rec.deadline_at - best_latency_ms / 1e3)
        if rec.ttft_deadline_at is not None:
            slacks.append(rec.ttft_deadline_at - best_ttft_ms / 1e3)
        return (0, min(slacks))

    def admit(self, rec: RequestRecord, serving: Instances, now: float) -> str | None:
        if not (rec.hard_deadline and has_deadline(rec)):
            return None
        preds = self.ctx.predict_all(rec, serving).values()
        if any(meets_deadlines(rec, p, now) for p in preds):
            return None
        best = min(p.latency_ms for p in preds)
        return f"SLO impossible: best predicted latency {best:.0f} ms misses the hard deadline"

    def place(self, rec: RequestRecord, cands: Candidates, now: float) -> Verdict:
        filtered = self.budget_filter(rec, cands)
        if not isinstance(filtered, tuple):
            return filtered
        room, preds = filtered
        if not has_deadline(rec) or rec.demoted:
            why = "no deadline" if not rec.demoted else "late: best effort"
            return Placement((room,), f"slo_aware: {why}", preds)
        hopeless = self._hopeless(rec, now)
        if hopeless is not None:
            return hopeless
        preds = preds or self.ctx.predict_all(rec, room)
        ok = feasible(rec, room, preds, now)
        if ok:
            capable = self._capable(rec, room, ok, now)
            reason = (
                f"slo_aware: {len(ok)}/{len(room)} instance(s) meet the deadline now, "
                f"{len(capable)} could when idle"
            )
            return Placement((capable,), reason, preds)
        return self._late(rec, cands, preds, now)

    def _capable(
        self, rec: RequestRecord, room: Instances, ok: list[ExecutionInstance], now: float
    ) -> Instances:
        """The instances of ``room`` that would meet the deadlines idle (``ok`` without an
        idle prediction); they include ``ok``, whose current predictions already do."""
        fast = {i.instance_id for i in ok}
        out: list[ExecutionInstance] = []
        for inst in room:
            if inst.instance_id in fast:
                out.append(inst)
                continue
            idle = self.ctx.predict_idle(rec, inst)
            if idle is not None and meets_deadlines(rec, idle, now):
                out.append(inst)
        return out

    def _hopeless(self, rec: RequestRecord, now: float) -> Verdict | None:
        """O(1) test against the cached best prediction (made when the fleet was no busier
        for this request): already too late there means too late anywhere now."""
        best = self.ctx.best(rec)
        if best is None or meets_deadlines(rec, Prediction(best[0], 0.0, best[1], 0.0), now):
            return None
        return self._verdict_late(rec, best[1], now)

    def _verdict_late(self, rec: RequestRecord, best_ms: float, now: float) -> Verdict:
        deadline = rec.deadline_at if rec.deadline_at is not None else rec.ttft_deadline_at
        assert deadline is not None
        left_ms = (deadline - now) * 1e3
        why = f"cannot meet its deadline: best predicted {best_ms:.0f} ms, {left_ms:.0f} ms left"
        if rec.hard_deadline:
            return Drop(RequestStatus.TIMEOUT, why)
        return Demote(f"{why}; demoted behind feasible requests")

    def _late(
        self, rec: RequestRecord, cands: Candidates, preds: dict[str, Prediction], now: float
    ) -> Verdict:
        others = [i for i in cands.everywhere() if i.instance_id not in preds]
        wait_for = frozenset(
            i.instance_id for i in others if meets_deadlines(rec, self.ctx.predict(rec, i), now)
        )
        if wait_for:
            return Defer("slo_aware: only busy instances can meet the deadline", wait_for)
        return self._verdict_late(rec, min(p.latency_ms for p in preds.values()), now)

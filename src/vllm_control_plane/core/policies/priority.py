"""``priority``: strict priority order, with aging so low priorities cannot starve.

Effective priority improves by one level per ``aging_s`` waited. At time ``t`` a request of
level ``L`` submitted at ``s`` ranks by ``L − (t − s)/aging_s``; multiplying by ``aging_s`` and
dropping the common ``t`` gives the static key ``L·aging_s + s`` — no re-sorting as time passes.
So a LOW request that waited 2·aging_s ranks with a fresh HIGH one, and every request
eventually reaches the head. Ties (same effective level) go to the earlier arrival.
"""

from __future__ import annotations

from vllm_control_plane.core.lifecycle import RequestRecord
from vllm_control_plane.core.policies.base import SchedulingPolicy
from vllm_control_plane.core.queue import QueueKey


def aged_priority_key(rec: RequestRecord, aging_s: float) -> QueueKey:
    """The aging key, shared with policies that order like ``priority``."""
    return (0, int(rec.request.priority) * aging_s + rec.submitted_at)


class PriorityPolicy(SchedulingPolicy):
    name = "priority"

    def order_key(self, rec: RequestRecord) -> QueueKey:
        return aged_priority_key(rec, self.ctx.limits.aging_s)

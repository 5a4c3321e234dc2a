"""``fifo``: first come, first served; any instance with room.

The baseline every other policy is measured against, and the order vLLM itself uses.
"""

from __future__ import annotations

from vllm_control_plane.core.lifecycle import RequestRecord
from vllm_control_plane.core.policies.base import SchedulingPolicy
from vllm_control_plane.core.queue import QueueKey


class FifoPolicy(SchedulingPolicy):
    name = "fifo"

    def order_key(self, rec: RequestRecord) -> QueueKey:
        return (0, rec.submitted_at)

"""Which instances are in rotation, and why the others are not.

Several independent detectors can take an instance out: active health checks (``"health"``),
its circuit breaker (``"circuit"``). The core has one ``is_healthy`` flag per instance; this
table keeps the reasons apart so that, e.g., a passing health check cannot readmit an instance
whose circuit is still open. An instance is in rotation when no reason keeps it out.
"""

from __future__ import annotations


class Rotation:
    """Out-of-rotation reasons per instance (pure)."""

    def __init__(self) -> None:
        self._out: dict[str, set[str]] = {}

    def set(self, instance_id: str, reason: str, out: bool) -> bool | None:
        """Add (``out``) or clear a reason; return the new in-rotation verdict if it changed."""
        reasons = self._out.setdefault(instance_id, set())
        was_in = not reasons
        if out:
            reasons.add(reason)
        else:
            reasons.discard(reason)
        now_in = not reasons
        return now_in if now_in != was_in else None

    def reasons(self, instance_id: str) -> list[str]:
        return sorted(self._out.get(instance_id, ()))

    def in_rotation(self, instance_id: str) -> bool:
        return not self._out.get(instance_id)

    def forget(self, instance_id: str) -> None:
        self._out.pop(instance_id, None)

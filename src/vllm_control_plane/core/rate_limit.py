"""Per-tenant admission limits: a token bucket on the request rate and a cap on requests in flight.

Pure: time comes in as ``now`` (seconds on any monotonic clock); nothing here sleeps, reads a
clock or knows about HTTP. The gateway calls :meth:`TenantLimiter.acquire` when a tenant's request
is about to enter the control plane and :meth:`TenantLimiter.release` when its response ends.

A bucket holds at most ``burst`` tokens and gains ``requests_per_s`` tokens per second; every
admitted request takes one. When fewer than one token is left the request is refused, and the
time until the bucket holds a whole token again, ``(1 - tokens) / rate``, is the client's
``Retry-After``. The concurrency cap is checked first, so a request refused for concurrency spends
no token (its retry would otherwise be punished twice).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

_EPS = 1e-9  # float slack: a bucket refilled to 0.9999999999 tokens holds one token

Limit = Literal["rate", "concurrency"]


@dataclass(frozen=True, slots=True)
class RateLimit:
    """One tenant's limits; ``None`` switches a limit off."""

    requests_per_s: float | None = None
    """Sustained request rate: the bucket's refill per second."""
    burst: int | None = None
    """Bucket size: requests that may arrive at once after a quiet spell (default: the rate
    rounded up, at least 1)."""
    max_concurrent: int | None = None
    """Requests of the tenant inside the gateway at once (queued or running)."""

    def __post_init__(self) -> None:
        if self.requests_per_s is not None and not self.requests_per_s > 0:
            raise ValueError(f"requests_per_s must be > 0, got {self.requests_per_s}")
        if self.burst is not None and (self.burst < 1 or self.requests_per_s is None):
            raise ValueError("burst must be >= 1 and needs requests_per_s")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise ValueError(f"max_concurrent must be >= 1, got {self.max_concurrent}")

    @property
    def capacity(self) -> float:
        """The bucket's size in tokens (meaningful only with a rate)."""
        if self.burst is not None:
            return float(self.burst)
        return float(max(1, math.ceil(self.requests_per_s or 1.0)))


@dataclass(frozen=True, slots=True)
class Admission:
    """The verdict on one request."""

    admitted: bool
    limit: Limit | None = None  # which limit refused it (None when admitted)
    retry_after_s: float | None = None  # rate: seconds until a token; concurrency: unknown
    reason: str = ""  # for the client: which limit and its value


_ADMITTED = Admission(True)


class TokenBucket:
    """``capacity`` tokens at most, ``rate`` more per second; starts full."""

    __slots__ = ("capacity", "rate", "stamp", "tokens")

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self.rate = rate
        self.capacity = capacity
        self.tokens = capacity
        self.stamp = now

    def refill(self, now: float) -> None:
        # a clock that steps back (it should not) neither refills nor moves the stamp back
        if now > self.stamp:
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now

    def take(self, now: float) -> float:
        """Take one token: 0.0 when taken, else the seconds until one is available."""
        self.refill(now)
        if self.tokens >= 1.0 - _EPS:
            self.tokens = max(0.0, self.tokens - 1.0)
            return 0.0
        return (1.0 - self.tokens) / self.rate


class TenantLimiter:
    """Every tenant's bucket and in-flight count. Survives config reloads (:meth:`configure`)."""

    def __init__(self) -> None:
        self._limits: dict[str, RateLimit] = {}
        self._buckets: dict[str, TokenBucket] = {}
        self._in_flight: dict[str, int] = {}

    def configure(self, limits: Mapping[str, RateLimit], now: float) -> None:
        """Apply a new set of limits. A tenant whose rate and burst did not change keeps its
        bucket as it is, so a reload cannot hand everyone a fresh burst; in-flight counts are
        kept for every tenant (requests admitted under the old limits still end here)."""
        buckets: dict[str, TokenBucket] = {}
        for name, limit in limits.items():
            if limit.requests_per_s is None:
                continue
            old = self._buckets.get(name)
            if old is not None and (old.rate, old.capacity) == (
                limit.requests_per_s,
                limit.capacity,
            ):
                buckets[name] = old
            else:
                buckets[name] = TokenBucket(limit.requests_per_s, limit.capacity, now)
        self._limits = dict(limits)
        self._buckets = buckets

    def acquire(self, tenant: str, now: float) -> Admission:
        """Admit one request of ``tenant`` (counting it in flight) or say which limit refuses."""
        limit = self._limits.get(tenant)
        running = self._in_flight.get(tenant, 0)
        cap = limit.max_concurrent if limit is not None else None
        if cap is not None and running >= cap:
            return Admission(False, "concurrency", None,
                             f"{running} requests in flight (max_concurrent {cap})")  # fmt: skip
        bucket = self._buckets.get(tenant)
        if bucket is not None:
            wait = bucket.take(now)
            if wait > 0.0:
                return Admission(False, "rate", wait,
                                 f"over {bucket.rate:g} requests/s (burst "
                                 f"{bucket.capacity:g})")  # fmt: skip
        self._in_flight[tenant] = running + 1
        return _ADMITTED

    def release(self, tenant: str) -> None:
        """One request admitted by :meth:`acquire` has ended."""
        running = self._in_flight.get(tenant, 0)
        if running <= 1:
            self._in_flight.pop(tenant, None)
        else:
            self._in_flight[tenant] = running - 1

    def in_flight(self, tenant: str) -> int:
        return self._in_flight.get(tenant, 0)

    def snapshot(self, now: float) -> dict[str, dict[str, Any]]:
        """Per tenant with limits or requests in flight: its limits, tokens left, in flight."""
        out: dict[str, dict[str, Any]] = {}
        for name in sorted(set(self._limits) | set(self._in_flight)):
            limit = self._limits.get(name, RateLimit())
            bucket = self._buckets.get(name)
            if bucket is not None:
                bucket.refill(now)
            out[name] = {
                "requests_per_s": limit.requests_per_s,
                "burst": limit.capacity if limit.requests_per_s is not None else None,
                "max_concurrent": limit.max_concurrent,
                "tokens": round(bucket.tokens, 3) if bucket is not None else None,
                "in_flight": self.in_flight(name),
            }
        return out

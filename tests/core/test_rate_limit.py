"""The per-tenant token bucket and concurrency cap, on a fake clock (time is an argument)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vllm_control_plane.core.rate_limit import RateLimit, TenantLimiter, TokenBucket


def _limiter(**limits: RateLimit) -> TenantLimiter:
    lim = TenantLimiter()
    lim.configure(limits, now=0.0)
    return lim


def test_burst_then_refusal_with_the_exact_wait() -> None:
    lim = _limiter(acme=RateLimit(requests_per_s=2.0, burst=3))
    assert [lim.acquire("acme", 0.0).admitted for _ in range(3)] == [True] * 3
    refused = lim.acquire("acme", 0.1)
    assert not refused.admitted and refused.limit == "rate"
    assert refused.retry_after_s == pytest.approx((1.0 - 0.2) / 2.0)  # 0.2 tokens refilled
    assert lim.acquire("acme", 0.1 + refused.retry_after_s).admitted  # exactly then: admitted
    assert "2 requests/s" in refused.reason and "burst 3" in refused.reason


def test_default_burst_is_the_rate_rounded_up() -> None:
    assert RateLimit(requests_per_s=0.2).capacity == 1.0
    assert RateLimit(requests_per_s=2.5).capacity == 3.0
    assert RateLimit(requests_per_s=2.5, burst=10).capacity == 10.0


@pytest.mark.parametrize(
    "kwargs", [{"requests_per_s": 0}, {"burst": 2}, {"requests_per_s": 1, "burst": 0},
               {"max_concurrent": 0}],
)  # fmt: skip
def test_invalid_limits_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        RateLimit(**kwargs)


def test_concurrency_cap_counts_in_flight_and_spends_no_token() -> None:
    lim = _limiter(acme=RateLimit(requests_per_s=1.0, burst=2, max_concurrent=1))
    assert lim.acquire("acme", 0.0).admitted
    busy = lim.acquire("acme", 0.0)
    assert not busy.admitted and busy.limit == "concurrency" and busy.retry_after_s is None
    lim.release("acme")
    assert lim.in_flight("acme") == 0
    assert lim.acquire("acme", 0.0).admitted  # the refused attempt did not take the 2nd token
    assert lim.snapshot(0.0)["acme"]["tokens"] == 0.0


def test_tenants_are_independent_and_unlimited_ones_are_only_counted() -> None:
    lim = _limiter(acme=RateLimit(requests_per_s=1.0, burst=1))
    assert lim.acquire("acme", 0.0).admitted
    assert not lim.acquire("acme", 0.0).admitted
    for _ in range(100):
        assert lim.acquire("globex", 0.0).admitted
    assert lim.in_flight("globex") == 100 and lim.in_flight("acme") == 1


def test_reconfigure_keeps_unchanged_buckets_and_all_counts() -> None:
    lim = _limiter(acme=RateLimit(requests_per_s=1.0, burst=1), globex=RateLimit(1.0, 1))
    lim.acquire("acme", 0.0)
    lim.acquire("globex", 0.0)
    lim.configure({"acme": RateLimit(1.0, 1), "globex": RateLimit(5.0, 5)}, now=0.0)
    assert not lim.acquire("acme", 0.0).admitted  # same limit: no fresh burst from a reload
    assert lim.acquire("globex", 0.0).admitted  # new limit: a new bucket
    lim.configure({}, now=0.0)  # limits removed: counts still end where they began
    assert lim.in_flight("acme") == 1 and lim.acquire("acme", 0.0).admitted
    lim.release("acme")
    lim.release("acme")
    lim.release("acme")  # an extra release never goes below zero
    assert lim.in_flight("acme") == 0


def test_a_clock_stepping_back_neither_refills_nor_breaks() -> None:
    bucket = TokenBucket(rate=1.0, capacity=1.0, now=10.0)
    assert bucket.take(10.0) == 0.0
    assert bucket.take(5.0) == pytest.approx(1.0)
    assert bucket.take(10.5) == pytest.approx(0.5)


@settings(max_examples=200, deadline=None)
@given(
    rate=st.floats(0.1, 50.0),
    burst=st.integers(1, 20),
    gaps=st.lists(st.floats(0.0, 2.0), min_size=1, max_size=200),
)
def test_admitted_never_exceeds_burst_plus_rate_times_elapsed(
    rate: float, burst: int, gaps: list[float]
) -> None:
    lim = _limiter(t=RateLimit(requests_per_s=rate, burst=burst))
    now, admitted = 0.0, 0
    for gap in gaps:
        now += gap
        verdict = lim.acquire("t", now)
        if verdict.admitted:
            admitted += 1
            lim.release("t")
        else:
            assert verdict.retry_after_s is not None and 0 < verdict.retry_after_s <= 1 / rate
    assert admitted <= burst + rate * now + 1e-6

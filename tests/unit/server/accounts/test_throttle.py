"""The auth-failure limiter: per client, per window, bounded in memory; pure, no database."""

from __future__ import annotations

import pytest

from server.accounts.throttle import FailureLimiter
from server.errors import RateLimitExceeded


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_failure_limiter_blocks_after_limit_then_recovers() -> None:
    clock = FakeClock(0.0)
    limiter = FailureLimiter(3, window=60, clock=clock)
    for second in range(3):
        clock.now = float(second)
        limiter.check("10.0.0.1")
        limiter.record("10.0.0.1")
    clock.now = 10.0
    with pytest.raises(RateLimitExceeded) as refused:
        limiter.check("10.0.0.1")
    assert refused.value.retry_after == 50  # the first failure (t=0) leaves at t=60
    limiter.check("10.0.0.2")  # other clients are not affected
    limiter.check(None)
    clock.now = 60.0
    limiter.check("10.0.0.1")  # one failure expired: allowed again
    limiter.record("10.0.0.1")
    with pytest.raises(RateLimitExceeded):
        limiter.check("10.0.0.1")


def test_failure_limiter_disabled_and_bounded() -> None:
    off = FailureLimiter(0)
    for _ in range(100):
        off.record("x")
        off.check("x")
    clock = FakeClock(0.0)
    bounded = FailureLimiter(5, clock=clock, max_clients=10)
    for i in range(50):
        clock.now = float(i)
        bounded.record(f"10.0.0.{i}")
    assert len(bounded._failures) <= 10

"""Token buckets: per user, shared by all of that user's connections on this instance."""

from __future__ import annotations

import time
from collections.abc import Callable

SWEEP_ABOVE = 10_000


class TokenBucket:
    """Allows `rate` events a second on average and bursts of up to `burst`."""

    __slots__ = ("_clock", "_stamp", "_tokens", "burst", "rate")

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._stamp = clock()

    def full(self) -> bool:
        """Whether the bucket has refilled completely (forgetting it changes nothing)."""
        return self._tokens + (self._clock() - self._stamp) * self.rate >= self.burst

    def allow(self) -> bool:
        """Take one token if there is one."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class UserLimits:
    """The buckets of every user connected here; forgotten when their last connection ends."""

    def __init__(self, rate: float, burst: int) -> None:
        self._rate = rate
        self._burst = burst
        self._buckets: dict[str, TokenBucket] = {}

    def allow(self, user: str) -> bool:
        """Take one token from a user's bucket."""
        bucket = self._buckets.get(user)
        if bucket is None:
            bucket = self._buckets[user] = TokenBucket(self._rate, self._burst)
        return bucket.allow()

    def forget(self, user: str) -> None:
        """Drop a disconnected user's bucket once it has refilled, so reconnecting is no reset."""
        bucket = self._buckets.get(user)
        if bucket is not None and bucket.full():
            del self._buckets[user]
        if len(self._buckets) > SWEEP_ABOVE:
            for name in [n for n, b in self._buckets.items() if b.full()]:
                del self._buckets[name]

"""Token buckets: the consumer's replay rate (it waits) and the gateway's per-caller intake limit
(it refuses with 429 and Retry-After)."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict


class TokenBucket:
    """``rate`` tokens per second, holding at most ``burst``."""

    def __init__(self, rate: float, burst: float) -> None:
        self._rate = rate
        self._burst = burst
        self._tokens = burst
        self._updated = time.monotonic()

    def take(self, n: float = 1.0) -> float:
        """Take ``n`` tokens if there are; return 0, or the seconds until there will be."""
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._updated) * self._rate)
        self._updated = now
        if self._tokens >= n:
            self._tokens -= n
            return 0.0
        return (n - self._tokens) / self._rate


class RateLimiter:
    """At most ``rate`` replays started per second (0 = no limit); callers wait their turn."""

    def __init__(self, rate: float) -> None:
        self._bucket = TokenBucket(rate, max(rate, 1.0)) if rate > 0 else None
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        if self._bucket is None:
            return
        # One waiter at a time keeps the order fair.
        async with self._lock:
            while True:
                wait = self._bucket.take()
                if wait <= 0:
                    return
                await asyncio.sleep(wait)


class PerCallerLimit:
    """One bucket per caller (rate 0 = no limit), for the most recent ``max_callers``
    callers, so memory stays bounded."""

    def __init__(self, rate: float, burst: float, max_callers: int = 10_000) -> None:
        self._rate = rate
        self._burst = burst
        self._max = max_callers
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def take(self, caller: str, n: int) -> float:
        """0 if ``caller`` may queue ``n`` operations now, else seconds to wait."""
        if self._rate <= 0:
            return 0.0
        bucket = self._buckets.pop(caller, None) or TokenBucket(self._rate, self._burst)
        self._buckets[caller] = bucket
        if len(self._buckets) > self._max:
            self._buckets.popitem(last=False)
        # A bulk larger than the burst could never pass: it is charged what the bucket holds.
        return bucket.take(min(n, self._burst))

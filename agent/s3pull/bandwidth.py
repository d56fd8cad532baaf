"""A mirror's ``max_bandwidth``: one token bucket shared by all of its downloads.

aiolimiter (the asyncio leaky bucket) was the first candidate, but it refuses an
acquisition larger than its capacity (a 1 MiB chunk under a 512 KiB/s cap) and reads the
event loop's clock, which a test cannot drive. The bucket below is the classic one: it
fills at ``rate`` bytes a second up to one second's worth, every chunk takes its bytes
(going into debt when there are too few), and whoever takes them waits until the debt
is paid. Concurrent downloads share the debt, so together they stay under the cap.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

__all__ = ["BURST_SECONDS", "TokenBucket"]

BURST_SECONDS: Final = 1.0  # a full bucket: what may go at once after a quiet spell


class TokenBucket:
    def __init__(
        self,
        rate: int,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        self.rate = rate
        self.capacity = rate * BURST_SECONDS
        self._clock = clock
        self._sleep = sleep
        self._tokens = self.capacity
        self._updated = clock()
        # What it let through, on its own clock: for status and for the tests that check
        # bytes against time (bytes <= capacity + rate * (last - first)).
        self.bytes = 0
        self.waited = 0.0
        self.first: float | None = None
        self.last: float | None = None

    def reserve(self, amount: int) -> float:
        """Take ``amount`` bytes from the bucket; return how long to wait before using
        them (0 when they were there)."""
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        self._tokens -= amount
        delay = max(0.0, -self._tokens / self.rate)
        self.bytes += amount
        self.waited += delay
        self.first = now if self.first is None else self.first
        self.last = max(self.last or now, now + delay)
        return delay

    async def take(self, amount: int) -> None:
        """Wait until ``amount`` more bytes fit under the cap."""
        if delay := self.reserve(amount):
            await self._sleep(delay)

    def report(self) -> dict[str, float | int]:
        """Cap, bytes let through, and the time they took on the bucket's clock."""
        span = (self.last - self.first) if self.first is not None and self.last else 0.0
        return {
            "limit_bytes_per_second": self.rate,
            "burst_bytes": int(self.capacity),
            "bytes": self.bytes,
            "seconds": round(span, 3),
            "waited_seconds": round(self.waited, 3),
        }

"""One rule for waiting after a transient failure: exponential, capped, with jitter."""

from __future__ import annotations

import random
from typing import Final

__all__ = ["BACKOFF_FIRST", "BACKOFF_MAX", "Backoff"]

BACKOFF_FIRST: Final = 1.0
BACKOFF_MAX: Final = 60.0


class Backoff:
    """Doubling delays from ``first`` up to ``most``.

    ``next()`` returns the delay to wait now, with "equal jitter" (between half and all of
    the nominal delay): a fleet of agents that failed together must not retry together.
    ``reset()`` after a success starts again from ``first``.
    """

    def __init__(
        self, first: float = BACKOFF_FIRST, most: float = BACKOFF_MAX, jitter: bool = True
    ) -> None:
        self._first = first
        self._most = most
        self._jitter = jitter
        self._nominal = first
        self.failures = 0

    @property
    def failing(self) -> bool:
        """Did the last attempt fail (no ``reset`` since)?"""
        return self.failures > 0

    @property
    def nominal(self) -> float:
        """The delay ``next()`` is about to return, before jitter (for log lines)."""
        return self._nominal

    def next(self) -> float:
        delay = self._nominal
        self.failures += 1
        self._nominal = min(self._nominal * 2, self._most)
        return delay * random.uniform(0.5, 1.0) if self._jitter else delay

    def reset(self) -> bool:
        """Back to the first delay; True when it was failing until now."""
        was_failing = self.failing
        self._nominal = self._first
        self.failures = 0
        return was_failing

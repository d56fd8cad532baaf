"""The daemon's two concurrency limits: messages in flight, and one change per key."""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator

__all__ = ["KeyLocks", "Slots"]


class Slots:
    """A budget of messages in flight. Taken before receiving, so a message is only
    received when there is room to start on it at once (and keep it invisible)."""

    def __init__(self, total: int) -> None:
        self._free = total
        self._changed = asyncio.Event()

    async def reserve(self, most: int) -> int:
        """Wait until at least one slot is free; take up to ``most``; return how many."""
        while self._free == 0:
            self._changed.clear()
            await self._changed.wait()
        taken = min(most, self._free)
        self._free -= taken
        return taken

    def release(self, count: int = 1) -> None:
        self._free += count
        self._changed.set()


class KeyLocks:
    """One asyncio.Lock per key, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._users: defaultdict[tuple[str, str], int] = defaultdict(int)

    @contextlib.asynccontextmanager
    async def hold(self, ident: tuple[str, str]) -> AsyncIterator[None]:
        lock = self._locks.setdefault(ident, asyncio.Lock())
        self._users[ident] += 1
        try:
            async with lock:
                yield
        finally:
            self._users[ident] -= 1
            if not self._users[ident]:
                del self._users[ident], self._locks[ident]

"""One stop signal for the daemon, and the waits that give way to it.

Signal handlers and watchers only *request* a stop; the loops notice. There are three
levels, each implying the ones before it:

* ``serve``: leave the current serve (a reload starts the next one with a new config);
* ``exit``: leave for good once work in flight is done (SIGTERM, SIGINT, Terminated);
* ``force``: a second signal: hand work in flight back now instead of waiting for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from s3pull.aws import TRANSIENT_ERRORS
from s3pull.backoff import Backoff

__all__ = ["StopSignal", "attempt", "sleep_unless"]

log = logging.getLogger(__name__)

T = TypeVar("T")


async def sleep_unless(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds``, or less if ``stop`` is set first; True when stopped."""
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        return False
    return True


class StopSignal:
    def __init__(self) -> None:
        self.serve = asyncio.Event()
        self.exit = asyncio.Event()
        self.force = asyncio.Event()

    @property
    def stopping(self) -> bool:
        return self.serve.is_set()

    @property
    def exiting(self) -> bool:
        return self.exit.is_set()

    def reload(self) -> None:
        """Leave the current serve; the daemon serves again with its next config."""
        self.serve.set()

    def request_exit(self) -> None:
        """Leave for good; asked twice, stop waiting for work in flight."""
        if self.exit.is_set():
            self.force.set()
        self.exit.set()
        self.serve.set()

    def next_serve(self) -> None:
        """A reload is done: the new serve runs until the next request."""
        if not self.exit.is_set():
            self.serve.clear()

    async def sleep(self, seconds: float) -> None:
        """Sleep, but wake at once when asked to stop."""
        await sleep_unless(self.serve, seconds)

    async def unless_stopping(self, work: Awaitable[T]) -> T | None:
        """Await ``work`` unless a stop comes first; then cancel it and return None."""
        task: asyncio.Future[T] = asyncio.ensure_future(work)
        stop = asyncio.ensure_future(self.serve.wait())
        racing: list[asyncio.Future[Any]] = [task, stop]
        try:
            await asyncio.wait(racing, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()  # the caller is going: the work must not outlive it
            raise
        finally:
            stop.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, *TRANSIENT_ERRORS):
                await task
            return None
        return task.result()

    async def retrying(
        self,
        what: str,
        call: Callable[[], Awaitable[T]],
        on_failure: Callable[[str], None] | None = None,
        explain: Callable[[BaseException], str] = str,
    ) -> T | None:
        """Run ``call`` until it succeeds, backing off on transient errors; None if
        stopped first. ``on_failure`` hears each failure (the daemon's phase);
        ``explain`` words an error for the operator (which setting to look at)."""
        backoff = Backoff()
        while not self.stopping:
            try:
                return await self.unless_stopping(call())
            except TRANSIENT_ERRORS as exc:
                said = explain(exc)
                if on_failure is not None:
                    on_failure(f"backing off: {what} failed: {said}")
                # The backoff doubles up to a minute: however long a wrong setting
                # lasts, this line comes at most once a minute.
                log.warning("%s failed, retrying in %.0f s: %s", what, backoff.nominal, said)
                await self.sleep(backoff.next())
        return None


async def attempt(what: str, call: Callable[[], Awaitable[T]], attempts: int) -> T | None:
    """Run ``call`` up to ``attempts`` times, even while stopping (final clean-up)."""
    backoff = Backoff()
    for number in range(1, attempts + 1):
        try:
            return await call()
        except TRANSIENT_ERRORS as exc:
            log.warning("%s failed (attempt %d of %d): %s", what, number, attempts, exc)
            await asyncio.sleep(backoff.next())
    log.error("%s failed %d times, giving up", what, attempts)
    return None

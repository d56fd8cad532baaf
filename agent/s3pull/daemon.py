"""``s3pull run``: wire the pieces together and own the lifecycle.

startup (temp-file cleanup, queue check, full reconcile) -> main loop (long poll, apply,
acknowledge) -> shutdown (stop receiving, drain with a deadline, hand back the rest).
Signal handlers only record the signal; the loop notices.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from s3pull.aws import TRANSIENT_ERRORS, Clients, open_clients
from s3pull.config import Config
from s3pull.errors import UnparseableBody, UnsafeKey
from s3pull.events import ObjectChange, parse_body
from s3pull.inbox import Inbox, Message
from s3pull.ledger import Ledger
from s3pull.mirror import Mirror
from s3pull.notify import Notifier
from s3pull.paths import remove_leftover_temp_files
from s3pull.reconcile import reconcile_all

__all__ = ["DRAIN_DEADLINE_SECONDS", "Daemon"]

log = logging.getLogger(__name__)

T = TypeVar("T")

# How long a stop waits for work in flight before handing messages back. The systemd
# unit's TimeoutStopSec must stay above this.
DRAIN_DEADLINE_SECONDS: Final = 30.0
BACKOFF_FIRST: Final = 1.0
BACKOFF_MAX: Final = 60.0
BOOTSTRAP_PASSES: Final = 3
STATUS_INTERVAL: Final = 5.0


@dataclass(slots=True)
class Stats:
    applied: int = 0
    refused: int = 0
    errors: int = 0
    phase: str = "starting"
    last_change_at: float | None = None

    def line(self) -> str:
        ago = (
            f", last change {time.monotonic() - self.last_change_at:.0f}s ago"
            if self.last_change_at is not None
            else ""
        )
        return (
            f"{self.phase}; {self.applied} changes applied, {self.refused} refused,"
            f" {self.errors} errors{ago}"
        )


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


class Daemon:
    def __init__(self, config: Config, notifier: Notifier | None = None) -> None:
        self.config = config
        self.notifier = notifier or Notifier()
        self.stats = Stats()
        self.should_exit = False
        self.force_exit = False
        self._stop = asyncio.Event()
        self._force = asyncio.Event()
        self._key_locks = KeyLocks()
        self._transfers = asyncio.Semaphore(config.agent.concurrency)
        # Messages being worked on at once; receiving pauses when all slots are taken.
        self._message_slots = asyncio.Semaphore(max(10, config.agent.concurrency * 2))
        self._work: set[asyncio.Task[None]] = set()

    # -- signals ---------------------------------------------------------------------

    def handle_exit(self, signum: int) -> None:
        if self.should_exit:
            self.force_exit = True
            self._force.set()
        self.should_exit = True
        self._stop.set()
        log.info("received %s, stopping", signal.Signals(signum).name)

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.handle_exit, signum)

    # -- lifecycle -------------------------------------------------------------------

    async def run(self, queue_url: str) -> int:
        self._install_signal_handlers()
        ledger = Ledger.open(self.config.agent.state_directory)
        try:
            async with open_clients(self.config) as clients:
                mirrors = [Mirror(m, clients.s3, ledger) for m in self.config.mirrors]
                inbox = Inbox(
                    clients.sqs,
                    queue_url,
                    self.config.queue.wait_time_seconds,
                    self.config.queue.visibility_timeout,
                )
                await self._startup(clients, inbox, mirrors)
                if not self.should_exit:
                    await self._main_loop(inbox, mirrors)
                await self._shutdown(inbox)
        finally:
            ledger.close()
        log.info("stopped: %s", self.stats.line())
        return 0

    async def _startup(self, clients: Clients, inbox: Inbox, mirrors: list[Mirror]) -> None:
        self._set_phase("bootstrapping")
        for mirror in mirrors:
            mirror.config.directory.mkdir(parents=True, exist_ok=True)
            removed = remove_leftover_temp_files(mirror.config.directory)
            if removed:
                log.info(
                    "%s: removed %d temporary file(s) left by an earlier run", mirror.name, removed
                )
        # The queue must exist before the reconcile lists S3: changes made while the
        # listing runs then wait in the queue instead of falling into a gap.
        await self._retrying(
            "checking the queue",
            lambda: clients.sqs.get_queue_attributes(
                QueueUrl=inbox.queue_url, AttributeNames=["QueueArn"]
            ),
        )
        await self._bootstrap(mirrors)

    async def _bootstrap(self, mirrors: list[Mirror]) -> None:
        """Reconcile every mirror; give a failing one a few tries, then go on without it.

        A mirror that cannot be listed (a wrong bucket, missing permissions) must not
        keep every other mirror from applying its changes; its own events are still
        applied as they come.
        """
        pending = list(mirrors)
        for attempt in range(1, BOOTSTRAP_PASSES + 1):
            failed: list[Mirror] = []
            for mirror in pending:
                job = reconcile_all([mirror], self.config.agent.concurrency)
                try:
                    report = await self._unless_stopping(asyncio.ensure_future(job))
                except TRANSIENT_ERRORS as exc:
                    log.warning(
                        "%s: reconcile failed (attempt %d of %d): %s",
                        mirror.name,
                        attempt,
                        BOOTSTRAP_PASSES,
                        exc,
                    )
                    failed.append(mirror)
                    continue
                if report is None:
                    return  # stopping
                if report.failed:
                    failed.append(mirror)
            pending = failed
            if not pending or attempt == BOOTSTRAP_PASSES:
                break
            await self._sleep(BACKOFF_FIRST * 2 ** (attempt - 1))
        for mirror in pending:
            self.stats.errors += 1
            log.error(
                "%s: could not be reconciled at start-up; its events are still applied."
                " Run `s3pull sync` or restart the agent to retry",
                mirror.name,
            )

    async def _main_loop(self, inbox: Inbox, mirrors: list[Mirror]) -> None:
        deleter = asyncio.create_task(inbox.delete_forever(), name="deleter")
        ticker = asyncio.create_task(self._tick(), name="tick")
        backoff = BACKOFF_FIRST
        ready = False
        try:
            while not self.should_exit:
                receive = asyncio.ensure_future(inbox.receive())
                if not ready:
                    ready = True
                    self._set_phase("in sync")
                    self.notifier.ready(self.stats.line())
                    log.info("ready: polling %s", inbox.queue_url)
                try:
                    messages = await self._unless_stopping(receive)
                except TRANSIENT_ERRORS as exc:
                    self._set_phase(f"backing off: SQS receive failed: {exc}")
                    log.warning("SQS receive failed, retrying in %.0f s: %s", backoff, exc)
                    await self._sleep(backoff * random.uniform(0.5, 1.0))
                    backoff = min(backoff * 2, BACKOFF_MAX)
                    continue
                if messages is None:
                    break  # stopping: the long poll was cut short
                if backoff > BACKOFF_FIRST:
                    backoff = BACKOFF_FIRST
                    self._set_phase("in sync")
                    log.info("SQS receive works again")
                for message in messages:
                    await self._message_slots.acquire()
                    task = asyncio.create_task(self._handle(inbox, mirrors, message))
                    self._work.add(task)
                    task.add_done_callback(self._finished)
        finally:
            ticker.cancel()
            deleter.cancel()
            await asyncio.gather(ticker, deleter, return_exceptions=True)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._work.discard(task)
        self._message_slots.release()

    async def _shutdown(self, inbox: Inbox) -> None:
        self.notifier.stopping(f"stopping: {len(self._work)} message(s) in flight")
        if self._work:
            log.info(
                "draining %d message(s) in flight (deadline %.0f s)",
                len(self._work),
                DRAIN_DEADLINE_SECONDS,
            )
            loop = asyncio.get_running_loop()
            deadline = loop.time() + DRAIN_DEADLINE_SECONDS
            force = asyncio.ensure_future(self._force.wait())
            while self._work and not self.force_exit and loop.time() < deadline:
                await asyncio.wait(
                    [*self._work, force],
                    timeout=deadline - loop.time(),
                    return_when=asyncio.FIRST_COMPLETED,
                )
            force.cancel()
            pending = list(self._work)
            if pending:
                log.warning("handing back %d unfinished message(s)", len(pending))
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
        await inbox.flush()

    # -- one message -----------------------------------------------------------------

    async def _handle(self, inbox: Inbox, mirrors: list[Mirror], message: Message) -> None:
        try:
            notification = parse_body(message.body)
        except UnparseableBody as exc:
            # Not deleted: it comes back until the redrive policy moves it to the
            # dead-letter queue, where the evidence stays.
            self.stats.errors += 1
            log.error(
                "message %s (receive %d) cannot be parsed, leaving it for the"
                " dead-letter queue: %s",
                message.message_id,
                message.receive_count,
                exc,
            )
            return
        if notification.test_event:
            log.info("message %s: s3:TestEvent acknowledged", message.message_id)
        for event_name in notification.ignored:
            log.info("message %s: ignoring %s event", message.message_id, event_name)
        try:
            async with inbox.kept_invisible(message):
                results = await asyncio.gather(
                    *(self._apply(mirrors, change) for change in notification.changes),
                    return_exceptions=True,
                )
        except asyncio.CancelledError:
            await asyncio.shield(inbox.release(message))
            raise
        if any(isinstance(result, BaseException) for result in results):
            await inbox.retry_later(message)
            return
        inbox.ack(message)

    async def _apply(self, mirrors: list[Mirror], change: ObjectChange) -> None:
        targets = [m for m in mirrors if m.covers(change.bucket, change.key)]
        if not targets:
            log.info(
                "no mirror covers s3://%s/%s, ignoring %s",
                change.bucket,
                change.key,
                change.event_name,
            )
            return
        for mirror in targets:
            async with self._key_locks.hold((mirror.name, change.key)), self._transfers:
                started = time.monotonic()
                try:
                    outcome = await mirror.apply(change)
                except UnsafeKey as refusal:
                    self.stats.refused += 1
                    log.warning("%s: %s", mirror.name, refusal)
                    continue
                except Exception as exc:
                    self.stats.errors += 1
                    log.error(
                        "%s: could not apply %s to %s, will retry: %s: %s",
                        mirror.name,
                        change.event_name,
                        change.key,
                        type(exc).__name__,
                        exc,
                    )
                    raise
                self.stats.applied += 1
                self.stats.last_change_at = time.monotonic()
                log.info(
                    "%s: %s %s (%s, %.0f ms)",
                    mirror.name,
                    outcome,
                    change.key,
                    change.event_name,
                    (time.monotonic() - started) * 1000,
                )

    # -- helpers ---------------------------------------------------------------------

    def _set_phase(self, phase: str) -> None:
        self.stats.phase = phase
        self.notifier.status(self.stats.line())

    async def _tick(self) -> None:
        """Watchdog pings and STATUS from the event loop itself: a stuck loop stops both."""
        interval = min(self.notifier.watchdog_interval or STATUS_INTERVAL, STATUS_INTERVAL)
        while True:
            if self.notifier.watchdog_interval is not None:
                self.notifier.watchdog()
            self.notifier.status(self.stats.line())
            await asyncio.sleep(interval)

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake at once when asked to stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), timeout=seconds)

    async def _unless_stopping(self, work: asyncio.Future[T]) -> T | None:
        """Await ``work`` unless a stop comes first; then cancel it and return None."""
        stop = asyncio.ensure_future(self._stop.wait())
        racing: list[asyncio.Future[Any]] = [work, stop]
        try:
            await asyncio.wait(racing, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if not work.done():
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError, *TRANSIENT_ERRORS):
                await work
            return None
        return work.result()

    async def _retrying(self, what: str, call: Callable[[], Awaitable[T]]) -> T | None:
        """Run ``call`` until it succeeds, backing off on transient errors; None if stopped."""
        backoff = BACKOFF_FIRST
        while not self.should_exit:
            try:
                return await self._unless_stopping(asyncio.ensure_future(call()))
            except TRANSIENT_ERRORS as exc:
                self._set_phase(f"backing off: {what} failed: {exc}")
                log.warning("%s failed, retrying in %.0f s: %s", what, backoff, exc)
                await self._sleep(backoff * random.uniform(0.5, 1.0))
                backoff = min(backoff * 2, BACKOFF_MAX)
        return None

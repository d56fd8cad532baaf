"""Message handling: receive -> parse -> apply to mirrors and triggers -> acknowledge.

A ``Dispatcher`` owns the limits that keep the work orderly (messages in flight, one change
per key at a time, parallel transfers) and decides each message's fate: acknowledged
(applied or deliberately refused), handed back to be retried, or left for the dead-letter
queue. It lives for one serve of the daemon; a reload builds a new one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from s3pull.aws import TRANSIENT_ERRORS
from s3pull.backoff import Backoff
from s3pull.errors import UnparseableBody, UnsafeKey
from s3pull.events import ObjectChange, parse_body
from s3pull.inbox import BATCH, Inbox, Message
from s3pull.limits import KeyLocks, Slots
from s3pull.logfields import journal_fields
from s3pull.metrics import Recorder
from s3pull.mirror import Mirror
from s3pull.provision import OwnQueue, is_missing_queue
from s3pull.sources import Trust
from s3pull.stopping import StopSignal
from s3pull.trigger import Trigger
from s3pull.watermark import Watermark

__all__ = ["Consumer", "Dispatcher", "Handled", "PollEnd"]

log = logging.getLogger(__name__)

Handled = Literal[
    "acknowledged",  # every change applied or deliberately refused: the message is deleted
    "retry",  # a change failed: handed back with a delay, redrive counts the receive
    "unparseable",  # left alone: the redrive policy moves it to the dead-letter queue
]

PollEnd = Literal[
    "stopped",  # asked to stop
    "queue gone",  # our provisioned queue was deleted under us: the daemon recreates it
]


@dataclass(frozen=True, slots=True)
class Consumer:
    """One queue and what its messages are applied to.

    ``own`` is set for the server's own provisioned queue: if it vanishes, the poll ends
    with "queue gone" so the daemon can recreate it and reconcile. ``explain`` words a
    receive error for the operator (which setting names a queue SQS does not know).
    ``watermark``, set for that queue too, learns from every receive and every message's
    end how far the server has applied (published on the queue's tags).
    """

    inbox: Inbox
    mirrors: list[Mirror]
    triggers: list[Trigger]
    own: OwnQueue | None = None
    explain: Callable[[BaseException], str] = str
    watermark: Watermark | None = None


class Dispatcher:
    def __init__(
        self,
        recorder: Recorder,
        concurrency: int,
        trust: Trust,
        on_phase: Callable[[str], None] | None = None,
    ) -> None:
        self._recorder = recorder
        # Which topics, event sources and buckets are believed; the daemon replaces it
        # once it has read the queue policy.
        self.trust = trust
        self._on_phase = on_phase or (lambda _phase: None)
        self._key_locks = KeyLocks()
        self._transfers = asyncio.Semaphore(concurrency)
        # Messages being worked on at once; receiving pauses when all slots are taken.
        self._slots = Slots(max(10, concurrency * 2))
        self._work: set[asyncio.Task[Handled]] = set()

    @property
    def in_flight(self) -> int:
        return len(self._work)

    # -- the queue -------------------------------------------------------------------

    async def poll(self, consumer: Consumer, stop: StopSignal) -> PollEnd:
        """Long-poll one queue until stopped, handing each message to its own task."""
        inbox = consumer.inbox
        log.info("ready: polling %s", inbox.queue_url)
        backoff = Backoff()
        while not stop.stopping:
            room = await stop.unless_stopping(self._slots.reserve(BATCH))
            if room is None:
                break  # stopping while every slot was busy
            mark = consumer.watermark
            started = mark.now() if mark is not None else 0.0
            try:
                messages = await stop.unless_stopping(inbox.receive(room))
            except TRANSIENT_ERRORS as exc:
                self._slots.release(room)
                if consumer.own is not None and is_missing_queue(exc):
                    return "queue gone"
                said = consumer.explain(exc)
                self._on_phase(f"backing off: SQS receive failed: {said}")
                log.warning(
                    "SQS receive from %s failed, retrying in %.0f s: %s",
                    inbox.queue_url,
                    backoff.nominal,
                    said,
                )
                await stop.sleep(backoff.next())
                continue
            if messages is None:
                self._slots.release(room)
                break  # stopping: the long poll was cut short
            if backoff.reset():
                self._on_phase("in sync")
                log.info("SQS receive from %s works again", inbox.queue_url)
            self._slots.release(room - len(messages))
            if mark is not None:
                if not messages:
                    mark.queue_was_empty(started)
                for message in messages:
                    mark.received(message)
            for message in messages:
                task = asyncio.create_task(self.handle(consumer, message))
                self._work.add(task)
                task.add_done_callback(self._finished)
        return "stopped"

    def _finished(self, task: asyncio.Task[Handled]) -> None:
        self._work.discard(task)
        self._slots.release()
        if not task.cancelled() and task.exception() is not None:
            # handle() handles every expected failure; this is a bug worth seeing.
            log.error("message handling failed unexpectedly", exc_info=task.exception())

    async def drain(self, deadline: float, force: asyncio.Event) -> int:
        """Let work in flight finish, for at most ``deadline`` seconds or until ``force``
        is set; then hand the rest back. Returns how many messages were handed back."""
        if not self._work:
            return 0
        log.info("draining %d message(s) in flight (deadline %.0f s)", len(self._work), deadline)
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline
        forced = asyncio.ensure_future(force.wait())
        try:
            while self._work and not force.is_set() and loop.time() < end:
                await asyncio.wait(
                    [*self._work, forced],
                    timeout=end - loop.time(),
                    return_when=asyncio.FIRST_COMPLETED,
                )
        finally:
            forced.cancel()
        pending = list(self._work)
        if pending:
            log.warning("handing back %d unfinished message(s)", len(pending))
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        return len(pending)

    # -- one message -----------------------------------------------------------------

    async def handle(self, consumer: Consumer, message: Message) -> Handled:
        """Apply everything ``message`` says, then acknowledge it or hand it back.

        Cancelled (a forced stop), it hands the message back at once and re-raises.
        """
        handled = await self._handle(consumer, message)
        if consumer.watermark is not None:
            consumer.watermark.finished(message, acknowledged=handled == "acknowledged")
        return handled

    async def _handle(self, consumer: Consumer, message: Message) -> Handled:
        inbox = consumer.inbox
        try:
            notification = parse_body(message.body)
        except UnparseableBody as exc:
            # Not deleted: it comes back until the redrive policy moves it to the
            # dead-letter queue, where the evidence stays.
            self._recorder.error("parse", f"message {message.message_id}: {exc}")
            log.error(
                "message %s (receive %d) cannot be parsed, leaving it for the"
                " dead-letter queue: %s",
                message.message_id,
                message.receive_count,
                exc,
            )
            return "unparseable"
        verdict = self.trust.judge(notification)
        for refusal in verdict.refusals:
            # Sending it again cannot make it come from elsewhere: refused, then deleted.
            self._recorder.source_refused(refusal.key, refusal.reason)
            log.warning("message %s: refused %s", message.message_id, refusal)
        notification = verdict.accepted
        if notification.test_event:
            log.info("message %s: s3:TestEvent acknowledged", message.message_id)
        for event_name in notification.ignored:
            log.info("message %s: ignoring %s event", message.message_id, event_name)
        try:
            async with inbox.kept_invisible(message):
                results = await asyncio.gather(
                    *(
                        self.apply(consumer, change, message.receive_count)
                        for change in notification.changes
                    ),
                    return_exceptions=True,
                )
        except asyncio.CancelledError:
            await asyncio.shield(inbox.release(message))
            raise
        if any(isinstance(result, BaseException) for result in results):
            await inbox.retry_later(message)
            return "retry"
        inbox.ack(message)
        if message.sent_timestamp_ms is not None:
            self._recorder.lag(max(0.0, time.time() - message.sent_timestamp_ms / 1000))
        return "acknowledged"

    async def apply(self, consumer: Consumer, change: ObjectChange, attempt: int = 1) -> None:
        """Apply one change to every mirror covering it and run the trigger it completes.

        Raises when any of them failed, so the message comes back; refusals do not.
        ``attempt`` is the message's receive count (a trigger's result reports it).
        """
        folders = [m for m in consumer.mirrors if m.config.covers(change.bucket, change.key)]
        mirrors = [m for m in folders if m.config.selects(change.key)]
        markers = [t for t in consumer.triggers if t.is_marker(change)]
        for mirror in folders:
            if mirror not in mirrors:  # its local file, if any, is left as it is
                log.info(
                    "%s: %s is left out by include/exclude, ignoring %s",
                    mirror.name,
                    change.key,
                    change.event_name,
                    extra=journal_fields(mirror=mirror.name, key=change.key),
                )
        for mirror in mirrors:
            await self._apply_to_mirror(mirror, change)
        for trigger in markers:
            await self._run_trigger(trigger, change, attempt)
        if not folders and not markers:
            covered = any(t.config.covers(change.bucket, change.key) for t in consumer.triggers)
            # A batch's own files are fetched when its marker comes: nothing to say then.
            (log.debug if covered else log.info)(
                "nothing here covers s3://%s/%s, ignoring %s",
                change.bucket,
                change.key,
                change.event_name,
            )

    async def _apply_to_mirror(self, mirror: Mirror, change: ObjectChange) -> None:
        async with self._key_locks.hold((mirror.name, change.key)), self._transfers:
            try:
                await mirror.apply(change)  # logs and counts what it applied or refused
            except Exception as exc:
                cause = "disk" if isinstance(exc, OSError) else "s3"
                self._recorder.failed(mirror.name, change.key, cause, exc)  # each one counts
                mirror.repeats.error(  # but one line per cause (an unwritable directory)
                    mirror.name,
                    change.key,
                    exc,
                    "%s: could not apply %s to %s, will retry: %s: %s",
                    mirror.name,
                    change.event_name,
                    change.key,
                    type(exc).__name__,
                    exc,
                    logger=log,
                    extra=journal_fields(mirror=mirror.name, key=change.key),
                )
                raise

    async def _run_trigger(self, trigger: Trigger, change: ObjectChange, attempt: int) -> None:
        batch = trigger.batch_prefix(change.key)
        tags = journal_fields(trigger=trigger.name, batch=batch, key=change.key)
        # One run per batch at a time; the batch's downloads have their own worker pool,
        # so no transfer slot is held while the command runs.
        async with self._key_locks.hold((f"trigger:{trigger.name}", batch)):
            started = time.monotonic()
            try:
                outcome = await trigger.run(change, attempt)
            except UnsafeKey as refusal:
                self._recorder.refused(f"trigger:{trigger.name}", refusal)
                self._trigger_done(trigger, batch, "refused", started)
                log.error("%s: batch %s refused: %s", trigger.name, batch, refusal, extra=tags)
                return
            except Exception as exc:
                self._recorder.failed(f"trigger:{trigger.name}", batch, "trigger", exc)
                self._trigger_done(trigger, batch, "failed", started)
                log.error(
                    "%s: batch %s failed (receive will be retried): %s: %s",
                    trigger.name,
                    batch,
                    type(exc).__name__,
                    exc,
                    extra=tags,
                )
                raise
            self._trigger_done(trigger, batch, outcome, started)
            log.info(
                "%s: batch %s %s (%s, %.1f s)",
                trigger.name,
                batch,
                outcome,
                change.key,
                time.monotonic() - started,
                extra=tags,
            )

    def _trigger_done(self, trigger: Trigger, batch: str, result: str, started: float) -> None:
        self._recorder.trigger_done(trigger.name, batch, result, time.monotonic() - started)

    def holding(self, mirror: Mirror, key: str) -> AbstractAsyncContextManager[None]:
        """The lock every change to ``key`` of ``mirror`` takes (for a concurrent
        reconcile)."""
        return self._key_locks.hold((mirror.name, key))

    # -- local drift -----------------------------------------------------------------

    async def repair(self, mirror: Mirror, path: Path) -> None:
        """Put back what S3 holds for a file changed on disk, in turn with the key's
        events: our own writes match the ledger by the time the lock lets us look."""
        key = mirror.config.prefix + path.relative_to(mirror.config.directory).as_posix()
        async with self._key_locks.hold((mirror.name, key)), self._transfers:
            try:
                await mirror.repair(path)
            except Exception as exc:  # the next change or reconcile tries again
                self._recorder.failed(mirror.name, key, "drift", exc)
                mirror.repeats.error(
                    mirror.name,
                    key,
                    exc,
                    "%s: could not repair local drift of %s: %s: %s",
                    mirror.name,
                    key,
                    type(exc).__name__,
                    exc,
                    logger=log,
                )

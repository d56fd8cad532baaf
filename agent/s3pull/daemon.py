"""``s3pull run``: wire the pieces together and own the lifecycle.

startup (temp-file cleanup, queue check, full reconcile) -> main loop (long poll, apply,
acknowledge) -> shutdown (stop receiving, drain with a deadline, hand back the rest).
Signal handlers only record the signal; the loop notices.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import random
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

from watchfiles import Change, awatch

from s3pull.aws import TRANSIENT_ERRORS, Clients, Service, open_clients
from s3pull.config import Config, load_config
from s3pull.errors import ConfigError, UnparseableBody, UnsafeKey
from s3pull.events import ObjectChange, parse_body
from s3pull.identity import Identity, InstanceMetadata, MetadataUnavailable
from s3pull.inbox import BATCH, Inbox, Message
from s3pull.ledger import Ledger
from s3pull.limits import KeyLocks, Slots
from s3pull.metrics import Metrics, Recorder
from s3pull.mirror import Mirror, journal_fields
from s3pull.notify import Notifier
from s3pull.paths import TEMP_PREFIX, remove_leftover_temp_files
from s3pull.provision import OwnQueue, is_missing_queue
from s3pull.reconcile import reconcile_all
from s3pull.status import Stats, write_snapshot
from s3pull.trigger import Trigger

__all__ = ["DRAIN_DEADLINE_SECONDS", "Daemon"]

log = logging.getLogger(__name__)

T = TypeVar("T")

# How long a stop waits for work in flight before handing messages back. The systemd
# unit's TimeoutStopSec must stay above this.
DRAIN_DEADLINE_SECONDS: Final = 30.0
DELETE_DEADLINE_SECONDS: Final = 10.0
HEARTBEAT_INTERVAL_SECONDS: Final = 3600.0
CONFIG_DEBOUNCE_MS: Final = 300
DRIFT_DEBOUNCE_MS: Final = 200
LIFECYCLE_POLL_SECONDS: Final = float(os.environ.get("S3PULL_LIFECYCLE_POLL_SECONDS", "15"))
BACKOFF_FIRST: Final = 1.0
BACKOFF_MAX: Final = 60.0
BOOTSTRAP_PASSES: Final = 3
STATUS_INTERVAL: Final = 5.0


@dataclass(frozen=True, slots=True)
class Consumer:
    """One queue and what its messages are applied to."""

    inbox: Inbox
    mirrors: list[Mirror]
    triggers: list[Trigger]


class Daemon:
    def __init__(
        self, config: Config, identity: Identity | None = None, notifier: Notifier | None = None
    ) -> None:
        self.config = config
        self.identity = identity or Identity(config.agent.instance_id, None, from_metadata=False)
        self._deprovision_on_exit = False
        self.notifier = notifier or Notifier()
        self.stats = Stats()
        self.metrics = Metrics()
        self.recorder = Recorder(self.stats, self.metrics)
        self.should_exit = False
        self.force_exit = False
        # _stop: leave the current serve (to exit, or to reload); _exit: leave for good.
        self._stop = asyncio.Event()
        self._exit = asyncio.Event()
        self._force = asyncio.Event()
        self._reload_requested = asyncio.Event()
        self._next_config: Config | None = None
        self._metrics_served = False
        self._key_locks = KeyLocks()
        self._work: set[asyncio.Task[None]] = set()
        self._size_for(config)

    def _size_for(self, config: Config) -> None:
        self._transfers = asyncio.Semaphore(config.agent.concurrency)
        # Messages being worked on at once; receiving pauses when all slots are taken.
        self._message_slots = Slots(max(10, config.agent.concurrency * 2))

    # -- signals ---------------------------------------------------------------------

    def handle_exit(self, signum: int) -> None:
        if self.should_exit:
            self.force_exit = True
            self._force.set()
        self._leave_for_good()
        log.info("received %s, stopping", signal.Signals(signum).name)

    def _leave_for_good(self) -> None:
        self.should_exit = True
        self._exit.set()
        self._stop.set()

    def handle_reload(self) -> None:
        log.info("received SIGHUP, reloading the configuration")
        self._reload_requested.set()

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.handle_exit, signum)
        loop.add_signal_handler(signal.SIGHUP, self.handle_reload)

    # -- lifecycle -------------------------------------------------------------------

    async def run(self) -> int:
        self._install_signal_handlers()
        reloader = [
            asyncio.create_task(self._reload_when_asked()),
            asyncio.create_task(self._watch_config_file()),
        ]
        try:
            while True:
                await self._run_once()
                if self.should_exit or self._next_config is None:
                    break
                # A new configuration, already validated: serve again with it. Stats and
                # metrics carry on; mirrors reconcile again at the start of the serve.
                self.config, self._next_config = self._next_config, None
                self._size_for(self.config)
                self._stop.clear()
                log.info(
                    "serving the new configuration: %d mirror(s), %d trigger(s)",
                    len(self.config.mirrors),
                    len(self.config.triggers),
                )
        finally:
            await self._cancel(reloader)
        log.info("stopped: %s", self.stats.line())
        self.stats.phase = "stopped"
        self._write_status()
        return 0

    def _services(self) -> tuple[Service, ...]:
        # SNS only to provision a per-server queue; never EC2 (that is gc's).
        return ("s3", "sqs", "sns") if self.config.queue.topic_arn else ("s3", "sqs")

    async def _run_once(self) -> None:
        ledger = Ledger.open(self.config.agent.state_directory)
        try:
            async with open_clients(
                self.config, *self._services(), region=self.identity.region
            ) as clients:
                own = OwnQueue(
                    clients.sqs, clients.sns, self.config.queue, self.identity.instance_id
                )
                await self._serve(clients, ledger, own)
                if self._deprovision_on_exit:
                    await self._attempt("deprovisioning", own.remove, attempts=5)
                    log.info("deprovisioned queue %s", own.name)
        finally:
            ledger.close()

    # -- reload ----------------------------------------------------------------------

    async def _reload_when_asked(self) -> None:
        """On SIGHUP or a change of the file: load it; if it is valid and different,
        leave the current serve so ``run`` starts again with it. A broken file is
        reported and the running configuration kept."""
        while True:
            await self._reload_requested.wait()
            self._reload_requested.clear()
            try:
                new = load_config(self.config.path)
            except ConfigError as exc:
                self.recorder.error("config", f"reload refused: {exc}")
                log.error("configuration reload failed, keeping the running configuration: %s", exc)
                continue
            if new == self.config:
                log.info("configuration unchanged")
                continue
            if new.metrics != self.config.metrics and self._metrics_served:
                log.warning("[metrics] changed: the metrics endpoint moves at the next restart")
            self._next_config = new
            self._stop.set()

    async def _watch_config_file(self) -> None:
        """Reload when the configuration file changes. The directory is watched, not the
        file, because editors and config managers replace files by renaming."""
        path = self.config.path.resolve()

        def is_config(_change: Change, changed: str) -> bool:
            return Path(changed) == path

        try:
            async for _changes in awatch(
                path.parent,
                watch_filter=is_config,
                stop_event=self._exit,
                recursive=False,
                debounce=CONFIG_DEBOUNCE_MS,
            ):
                log.info("configuration file %s changed", path)
                self._reload_requested.set()
        except OSError as exc:  # the directory vanished, or no inotify watches left
            log.warning("not watching %s for changes (SIGHUP still reloads): %s", path, exc)

    async def _serve(self, clients: Clients, ledger: Ledger, own: OwnQueue) -> None:
        mirrors = [Mirror(m, clients.s3, ledger, self.recorder) for m in self.config.mirrors]
        triggers = [
            Trigger(t, clients.s3, ledger, self.config.agent.concurrency, self.recorder)
            for t in self.config.triggers
        ]
        if self.config.metrics is not None and not self._metrics_served:
            self.metrics.serve(self.config.metrics)
            self._metrics_served = True
        # The tick runs from the start, so systemd hears from a long bootstrap.
        helpers = [asyncio.create_task(self._tick(), name="tick")]
        self._set_phase("bootstrapping")
        # The queue must exist and be subscribed before the reconcile lists S3: changes
        # made while the listing runs then wait in the queue instead of falling into a gap.
        queue_url = await self._retrying(
            "provisioning the queue" if own.provisioned else "checking the queue",
            functools.partial(self._own_queue_url, clients, own),
        )
        if queue_url is None:  # stopped before it existed
            await self._cancel(helpers)
            return
        consumers = self._consumers(clients, queue_url, mirrors, triggers)
        self.stats.queue_urls = [c.inbox.queue_url for c in consumers]
        deleters = [asyncio.create_task(c.inbox.delete_forever()) for c in consumers]
        if own.provisioned:
            helpers.append(asyncio.create_task(self._heartbeat(own, consumers[0].inbox)))
        if self.identity.from_metadata:
            helpers.append(asyncio.create_task(self._watch_lifecycle()))
        try:
            await self._startup(clients, consumers, mirrors, triggers)
            if not self._stop.is_set():
                helpers.append(asyncio.create_task(self._watch_drift(mirrors)))
                await self._main_loop(consumers, own, mirrors)
            await self._shutdown()
        finally:
            await self._stop_deleters(consumers, deleters)
            await self._cancel(helpers)

    async def _own_queue_url(self, clients: Clients, own: OwnQueue) -> str:
        url = await own.ensure()
        # One cheap call proves the queue answers (and, for a fixed URL, exists).
        await clients.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
        return url

    @staticmethod
    async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _consumers(
        self, clients: Clients, queue_url: str, mirrors: list[Mirror], triggers: list[Trigger]
    ) -> list[Consumer]:
        """The server's own queue feeds every mirror and the triggers without a queue of
        their own; each shared trigger queue feeds only its triggers (one server of the
        fleet takes each marker)."""
        queue = self.config.queue

        def inbox(url: str) -> Inbox:
            return Inbox(clients.sqs, url, queue.wait_time_seconds, queue.visibility_timeout)

        own = [t for t in triggers if not t.config.queue_url]
        consumers = [Consumer(inbox(queue_url), mirrors, own)]
        shared_urls = dict.fromkeys(t.config.queue_url for t in triggers if t.config.queue_url)
        for url in shared_urls:
            shared = [t for t in triggers if t.config.queue_url == url]
            consumers.append(Consumer(inbox(url), [], shared))
        return consumers

    async def _startup(
        self,
        clients: Clients,
        consumers: list[Consumer],
        mirrors: list[Mirror],
        triggers: list[Trigger],
    ) -> None:
        directories = [m.config.directory for m in mirrors] + [t.config.directory for t in triggers]
        for directory in directories:
            directory.mkdir(parents=True, exist_ok=True)
            removed = remove_leftover_temp_files(directory)
            if removed:
                log.info(
                    "%s: removed %d temporary file(s) left by an earlier run", directory, removed
                )
        for consumer in consumers[1:]:  # shared trigger queues; ours was checked already
            check = functools.partial(
                clients.sqs.get_queue_attributes,
                QueueUrl=consumer.inbox.queue_url,
                AttributeNames=["QueueArn"],
            )
            await self._retrying("checking the shared queue", check)
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
                self.stats.reconcile(
                    report.downloaded, report.deleted, report.failed, report.seconds
                )
                self.metrics.reconcile_seconds.labels(mirror.name).observe(report.seconds)
                if report.failed:
                    failed.append(mirror)
            pending = failed
            if not pending or attempt == BOOTSTRAP_PASSES:
                break
            await self._sleep(BACKOFF_FIRST * 2 ** (attempt - 1))
        for mirror in pending:
            self.recorder.error("reconcile", f"{mirror.name}: could not be reconciled")
            log.error(
                "%s: could not be reconciled at start-up; its events are still applied."
                " Run `s3pull sync` or restart the agent to retry",
                mirror.name,
            )

    async def _main_loop(
        self, consumers: list[Consumer], own: OwnQueue, mirrors: list[Mirror]
    ) -> None:
        self._set_phase("in sync")
        self.notifier.ready(self.stats.line())
        # A poller that fails for good (a bug, not a transient error) takes the others
        # down with it and the daemon exits non-zero for systemd to restart it.
        async with asyncio.TaskGroup() as pollers:
            pollers.create_task(self._poll(consumers[0], own, mirrors))
            for consumer in consumers[1:]:
                pollers.create_task(self._poll(consumer))

    async def _stop_deleters(
        self, consumers: list[Consumer], deleters: list[asyncio.Task[None]]
    ) -> None:
        """Let each deleter send what was acknowledged (the drain included), then end."""
        for consumer in consumers:
            consumer.inbox.close()
        _done, late = await asyncio.wait(deleters, timeout=DELETE_DEADLINE_SECONDS)
        for task in late:
            task.cancel()
        if late:
            log.warning(
                "gave up deleting applied messages after %.0f s; they will come"
                " back and cost a conditional GET each",
                DELETE_DEADLINE_SECONDS,
            )
        await asyncio.gather(*deleters, return_exceptions=True)

    async def _poll(
        self,
        consumer: Consumer,
        own: OwnQueue | None = None,
        mirrors: list[Mirror] | None = None,
    ) -> None:
        """Long-poll one queue until stopped, handing each message to its own task.

        ``own`` is given for the server's own queue: if it was provisioned and vanishes,
        it is recreated and ``mirrors`` reconciled, since events were lost with it.
        """
        inbox = consumer.inbox
        log.info("ready: polling %s", inbox.queue_url)
        backoff = BACKOFF_FIRST
        while not self._stop.is_set():
            room = await self._unless_stopping(
                asyncio.ensure_future(self._message_slots.reserve(BATCH))
            )
            if room is None:
                return  # stopping while every slot was busy
            try:
                messages = await self._unless_stopping(asyncio.ensure_future(inbox.receive(room)))
            except TRANSIENT_ERRORS as exc:
                self._message_slots.release(room)
                if own is not None and own.provisioned and is_missing_queue(exc):
                    await self._recover_queue(inbox, own, mirrors or [])
                    continue
                self._set_phase(f"backing off: SQS receive failed: {exc}")
                log.warning(
                    "SQS receive from %s failed, retrying in %.0f s: %s",
                    inbox.queue_url,
                    backoff,
                    exc,
                )
                await self._sleep(backoff * random.uniform(0.5, 1.0))
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            if messages is None:
                self._message_slots.release(room)
                return  # stopping: the long poll was cut short
            if backoff > BACKOFF_FIRST:
                backoff = BACKOFF_FIRST
                self._set_phase("in sync")
                log.info("SQS receive from %s works again", inbox.queue_url)
            self._message_slots.release(room - len(messages))
            for message in messages:
                task = asyncio.create_task(self._handle(consumer, message))
                self._work.add(task)
                task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._work.discard(task)
        self._message_slots.release()
        if not task.cancelled() and task.exception() is not None:
            # _handle handles every expected failure; this is a bug worth seeing.
            log.error("message handling failed unexpectedly", exc_info=task.exception())

    async def _shutdown(self) -> None:
        if self.should_exit:
            self.notifier.stopping(f"stopping: {len(self._work)} message(s) in flight")
        else:
            # Leaving this serve for a new configuration, not exiting: STOPPING=1 would
            # make systemd start its stop timer and SIGKILL us 90 s later. READY=1 from
            # the next serve ends the reload.
            self.notifier.reloading(f"reloading: {len(self._work)} message(s) in flight")
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

    async def _recover_queue(self, inbox: Inbox, own: OwnQueue, mirrors: list[Mirror]) -> None:
        """Our queue was deleted under us: recreate it, then reconcile, because every
        event sent while it was gone is lost."""
        self.recorder.error("sqs", f"queue {own.name} disappeared")
        log.error("queue %s no longer exists: recreating it, then reconciling", own.name)
        self._set_phase("recreating the queue")
        url = await self._retrying("recreating the queue", own.ensure)
        if url is None:
            return
        inbox.queue_url = url
        await self._bootstrap(mirrors)
        self._set_phase("in sync")
        log.info("queue %s recreated and mirrors reconciled", own.name)

    async def _heartbeat(self, own: OwnQueue, inbox: Inbox) -> None:
        """Refresh the heartbeat tag ``gc`` uses to tell a live server from a lost one."""
        while True:
            await asyncio.sleep(HEARTBEAT_INTERVAL_SECONDS)
            try:
                await own.heartbeat(inbox.queue_url)
            except TRANSIENT_ERRORS as exc:
                log.warning("could not refresh the queue's heartbeat tag: %s", exc)

    async def _watch_lifecycle(self) -> None:
        """Drain and deprovision when Auto Scaling says this instance is terminating."""
        metadata = InstanceMetadata()
        while not self._stop.is_set():
            await asyncio.sleep(LIFECYCLE_POLL_SECONDS)
            try:
                state = await metadata.lifecycle_state()
            except MetadataUnavailable as exc:
                log.debug("lifecycle state unavailable: %s", exc)
                continue
            if state == "Terminated":
                log.info(
                    "Auto Scaling target lifecycle state is Terminated: draining, then"
                    " removing this server's queue and subscription"
                )
                self._deprovision_on_exit = True
                self._leave_for_good()
                return

    async def _watch_drift(self, mirrors: list[Mirror]) -> None:
        """Put back what someone changed or deleted in a mirror, and remove files S3 does
        not have (when the mirror mirrors deletions). Our own writes match the ledger by
        the time the per-key lock lets the repair look at them, so they are skipped."""
        if not mirrors:
            return
        roots = [m.config.directory for m in mirrors]
        async for changes in awatch(
            *roots,
            stop_event=self._stop,
            debounce=DRIFT_DEBOUNCE_MS,
            recursive=True,
            ignore_permission_denied=True,
        ):
            for _change, changed in sorted(changes, key=lambda c: c[1]):
                path = Path(changed)
                if path.name.startswith(TEMP_PREFIX):
                    continue
                for mirror in mirrors:
                    if path.is_relative_to(mirror.config.directory):
                        await self._repair(mirror, path)

    async def _repair(self, mirror: Mirror, path: Path) -> None:
        key = mirror.config.prefix + path.relative_to(mirror.config.directory).as_posix()
        async with self._key_locks.hold((mirror.name, key)), self._transfers:
            try:
                await mirror.repair(path)
            except Exception as exc:  # the next change or reconcile tries again
                self.recorder.error("drift", f"{mirror.name}: {key}: {exc}")
                log.error(
                    "%s: could not repair local drift of %s: %s: %s",
                    mirror.name,
                    key,
                    type(exc).__name__,
                    exc,
                )

    # -- one message -----------------------------------------------------------------

    async def _handle(self, consumer: Consumer, message: Message) -> None:
        inbox = consumer.inbox
        try:
            notification = parse_body(message.body)
        except UnparseableBody as exc:
            # Not deleted: it comes back until the redrive policy moves it to the
            # dead-letter queue, where the evidence stays.
            self.recorder.error("parse", f"message {message.message_id}: {exc}")
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
                    *(self._apply(consumer, change) for change in notification.changes),
                    return_exceptions=True,
                )
        except asyncio.CancelledError:
            await asyncio.shield(inbox.release(message))
            raise
        if any(isinstance(result, BaseException) for result in results):
            await inbox.retry_later(message)
            return
        inbox.ack(message)
        if message.sent_timestamp_ms is not None:
            lag = max(0.0, time.time() - message.sent_timestamp_ms / 1000)
            self.stats.lag_seconds = lag
            self.metrics.queue_lag.observe(lag)

    async def _apply(self, consumer: Consumer, change: ObjectChange) -> None:
        """Apply one change to every mirror covering it and run the trigger it completes.

        Raises when any of them failed, so the message comes back; refusals do not.
        """
        mirrors = [m for m in consumer.mirrors if m.covers(change.bucket, change.key)]
        markers = [t for t in consumer.triggers if t.is_marker(change)]
        for mirror in mirrors:
            await self._apply_to_mirror(mirror, change)
        for trigger in markers:
            await self._run_trigger(trigger, change)
        if not mirrors and not markers:
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
                self.recorder.error(cause, f"{mirror.name}: {change.key}: {exc}")
                log.error(
                    "%s: could not apply %s to %s, will retry: %s: %s",
                    mirror.name,
                    change.event_name,
                    change.key,
                    type(exc).__name__,
                    exc,
                    extra=journal_fields(mirror=mirror.name, key=change.key),
                )
                raise

    async def _run_trigger(self, trigger: Trigger, change: ObjectChange) -> None:
        batch = trigger.batch_prefix(change.key)
        tags = journal_fields(trigger=trigger.name, batch=batch, key=change.key)
        # One run per batch at a time; the batch's downloads have their own worker pool,
        # so no transfer slot is held while the command runs.
        async with self._key_locks.hold((f"trigger:{trigger.name}", batch)):
            started = time.monotonic()
            try:
                outcome = await trigger.run(change)
            except UnsafeKey as refusal:
                self.recorder.refused(f"trigger:{trigger.name}", refusal)
                self._trigger_done(trigger.name, batch, "refused", started)
                log.error("%s: batch %s refused: %s", trigger.name, batch, refusal, extra=tags)
                return
            except Exception as exc:
                self.recorder.error("trigger", f"{trigger.name} {batch}: {exc}")
                self._trigger_done(trigger.name, batch, "failed", started)
                log.error(
                    "%s: batch %s failed (receive will be retried): %s: %s",
                    trigger.name,
                    batch,
                    type(exc).__name__,
                    exc,
                    extra=tags,
                )
                raise
            self._trigger_done(trigger.name, batch, outcome, started)
            log.info(
                "%s: batch %s %s (%s, %.1f s)",
                trigger.name,
                batch,
                outcome,
                change.key,
                time.monotonic() - started,
                extra=tags,
            )

    def _trigger_done(self, trigger: str, batch: str, result: str, started: float) -> None:
        seconds = time.monotonic() - started
        self.stats.trigger_run(trigger, batch, result, seconds)
        self.metrics.trigger_runs.labels(trigger, result).inc()
        if result in ("succeeded", "failed"):
            self.metrics.trigger_seconds.labels(trigger).observe(seconds)

    # -- helpers ---------------------------------------------------------------------

    def _set_phase(self, phase: str) -> None:
        self.stats.phase = phase
        self.notifier.status(self.stats.line(len(self._work)))

    async def _tick(self) -> None:
        """Watchdog pings and STATUS from the event loop itself: a stuck loop stops both."""
        interval = min(self.notifier.watchdog_interval or STATUS_INTERVAL, STATUS_INTERVAL)
        while True:
            if self.notifier.watchdog_interval is not None:
                self.notifier.watchdog()
            if self.stats.phase == "bootstrapping":
                # A full reconcile of a large bucket can outlast TimeoutStartSec: ask
                # systemd for more time, a few ticks at once, for as long as it runs.
                self.notifier.extend_timeout(3 * interval)
            self.notifier.status(self.stats.line(len(self._work)))
            self._write_status()
            await asyncio.sleep(interval)

    def _write_status(self) -> None:
        self.metrics.in_flight.set(len(self._work))
        try:
            write_snapshot(self.config.agent.state_directory, self.stats.snapshot(len(self._work)))
        except OSError as exc:  # a full disk must not stop the daemon; say it once a tick
            log.warning("could not write the status file: %s", exc)

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
        while not self._stop.is_set():
            try:
                return await self._unless_stopping(asyncio.ensure_future(call()))
            except TRANSIENT_ERRORS as exc:
                self._set_phase(f"backing off: {what} failed: {exc}")
                log.warning("%s failed, retrying in %.0f s: %s", what, backoff, exc)
                await self._sleep(backoff * random.uniform(0.5, 1.0))
                backoff = min(backoff * 2, BACKOFF_MAX)
        return None

    @staticmethod
    async def _attempt(what: str, call: Callable[[], Awaitable[T]], attempts: int) -> T | None:
        """Run ``call`` up to ``attempts`` times, even while stopping (final clean-up)."""
        for attempt in range(1, attempts + 1):
            try:
                return await call()
            except TRANSIENT_ERRORS as exc:
                log.warning("%s failed (attempt %d of %d): %s", what, attempt, attempts, exc)
                await asyncio.sleep(BACKOFF_FIRST * 2 ** (attempt - 1))
        log.error("%s failed %d times, giving up", what, attempts)
        return None

"""``s3pull run``: wire the pieces together and own the lifecycle.

startup (temp-file cleanup, queue check, full reconcile) -> main loop (long poll, apply,
acknowledge) -> shutdown (stop receiving, drain with a deadline, hand back the rest).
Signal handlers only record the signal; the loops notice. The work itself lives in
``dispatch`` (messages), ``reconcile`` (full listings) and ``watchers`` (everything else).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import socket
from collections.abc import Callable
from typing import Any, Final

from s3pull.aws import Clients, Service, open_clients
from s3pull.config import Config, TriggerConfig
from s3pull.dispatch import Consumer, Dispatcher
from s3pull.heap import release_free_memory
from s3pull.identity import Identity
from s3pull.inbox import Inbox
from s3pull.ledger import Ledger
from s3pull.logfields import SUMMARY
from s3pull.metrics import Metrics, Recorder
from s3pull.mirror import Mirror
from s3pull.notify import Notifier
from s3pull.onchange import OnChange
from s3pull.provision import OwnQueue, is_missing_queue, missing_queue_advice
from s3pull.publish import StatePublisher
from s3pull.reconcile import bootstrap
from s3pull.repeats import DAEMON_INTERVAL, Repeats
from s3pull.results import Results
from s3pull.sources import Trust, load_trust
from s3pull.status import Stats, write_snapshot
from s3pull.stopping import StopSignal, attempt
from s3pull.trigger import Trigger
from s3pull.walk import remove_leftover_temp_files
from s3pull.watchers import (
    config_file_changes,
    lifecycle_terminated,
    local_drift,
    next_config,
    periodic_reconciles,
)
from s3pull.watermark import Watermark

__all__ = ["DELETE_DEADLINE_SECONDS", "DRAIN_DEADLINE_SECONDS", "Daemon"]

log = logging.getLogger(__name__)

# How long a stop waits for work in flight before handing messages back. The systemd
# unit's TimeoutStopSec must stay above this.
DRAIN_DEADLINE_SECONDS: Final = 30.0
DELETE_DEADLINE_SECONDS: Final = 10.0
FINAL_PUBLISH_SECONDS: Final = 5.0  # the "stopped" tag must not hold up an exit
STATUS_INTERVAL: Final = 5.0


class Daemon:
    def __init__(
        self, config: Config, identity: Identity | None = None, notifier: Notifier | None = None
    ) -> None:
        self.config = config
        self.identity = identity or Identity(config.agent.instance_id, None, from_metadata=False)
        self.notifier = notifier or Notifier()
        self.stats = Stats()
        self.metrics = Metrics(enabled=config.metrics is not None)
        self.recorder = Recorder(self.stats, self.metrics)
        # Local errors of every mirror, one line per cause and interval (issue 16).
        self.repeats = Repeats(DAEMON_INTERVAL)
        self.stop = StopSignal()
        self.dispatcher = self._new_dispatcher()
        self._config_path = config.path.resolve()  # a reload reads the same file
        self._reload_requested = asyncio.Event()
        self._next_config: Config | None = None
        self._metrics_served = False
        self._deprovision_on_exit = False
        self._mirrors: list[Mirror] = []

    def _new_dispatcher(self) -> Dispatcher:
        # Until the queue policy is read, only what the configuration names is trusted.
        trust = Trust.from_config(self.config)
        return Dispatcher(self.recorder, self.config.agent.concurrency, trust, self._set_phase)

    # -- signals ---------------------------------------------------------------------

    def handle_exit(self, signum: int) -> None:
        self.stop.request_exit()
        log.info("received %s, stopping", signal.Signals(signum).name)

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
        watchers = [
            asyncio.create_task(self._reload_when_asked()),
            asyncio.create_task(
                config_file_changes(self._config_path, self._reload_requested, self.stop.exit)
            ),
        ]
        try:
            while True:
                await self._run_once()
                if self.stop.exiting or self._next_config is None:
                    break
                # A new configuration, already validated: serve again with it. Stats and
                # metrics carry on; mirrors reconcile again at the start of the serve.
                self.config, self._next_config = self._next_config, None
                self.dispatcher = self._new_dispatcher()
                self.stop.next_serve()
                log.info(
                    "serving the new configuration: %d mirror(s), %d trigger(s)",
                    len(self.config.mirrors),
                    len(self.config.triggers),
                )
        finally:
            await _cancel(watchers)
            self.repeats.flush()  # what was counted since the last summary
        log.info("stopped: %s", self.stats.line(), extra=SUMMARY)
        self.stats.phase = "stopped"
        self._write_status()
        return 0

    async def _reload_when_asked(self) -> None:
        """SIGHUP or a changed file: serve again with the new configuration."""
        while True:
            new = await next_config(
                lambda: self._next_config or self.config, self._reload_requested, self.recorder
            )
            if new.metrics != self.config.metrics and self._metrics_served:
                log.warning("[metrics] changed: the metrics endpoint moves at the next restart")
            self._next_config = new
            self.stop.reload()

    def _services(self) -> tuple[Service, ...]:
        # SNS only to provision a per-server queue; never EC2 (that is gc's).
        return ("s3", "sqs", "sns") if self.config.queue.topic_arn else ("s3", "sqs")

    async def _run_once(self) -> None:
        ledger = Ledger.open(self.config.agent.state_directory)
        ledger.on_rebuilt = self._reconcile_into_fresh_ledger
        try:
            async with open_clients(
                self.config, *self._services(), region=self.identity.region
            ) as clients:
                own = OwnQueue(
                    clients.sqs, clients.sns, self.config.queue, self.identity.instance_id
                )
                await self._serve(clients, ledger, own)
                if self._deprovision_on_exit:
                    await attempt("deprovisioning", own.remove, attempts=5)
                    log.info("deprovisioned queue %s", own.name)
        finally:
            ledger.close()

    def _reconcile_into_fresh_ledger(self, _aside: object) -> None:
        """A corrupt ledger was replaced mid-run: serve again, which reconciles every mirror."""
        log.warning("serving again to reconcile every mirror into the fresh ledger")
        self._next_config = self._next_config or self.config
        self.stop.reload()

    def _results(self, trigger: TriggerConfig, s3: Any) -> Results | None:
        location = trigger.results_location
        if location is None:
            return None
        bucket, folder = location
        # `run` resolves the instance id when results are configured; the host name is
        # for a Daemon built without one (tests, a non-EC2 host with a fixed queue URL).
        instance = self.identity.instance_id or socket.gethostname()
        return Results(s3, bucket, folder, instance, self.recorder)

    async def _serve(self, clients: Clients, ledger: Ledger, own: OwnQueue) -> None:
        hooks = {m.name: OnChange(m, self.recorder) for m in self.config.mirrors if m.on_change}
        mirrors = [
            Mirror(
                m,
                clients.s3,
                ledger,
                self.recorder,
                self.repeats,
                on_changed=hooks[m.name].note if m.name in hooks else None,
            )
            for m in self.config.mirrors
        ]
        self.stats.forget_mirrors_except({m.name for m in mirrors})
        self._mirrors = mirrors
        triggers = [
            Trigger(
                t,
                clients.s3,
                ledger,
                self.config.agent.concurrency,
                self.recorder,
                self._results(t, clients.s3),
            )
            for t in self.config.triggers
        ]
        if self.config.metrics is not None and not self._metrics_served:
            self.metrics.serve(self.config.metrics)
            self._metrics_served = True
        # The tick runs from the start, so systemd hears from a long bootstrap.
        helpers = [asyncio.create_task(self._tick(), name="tick")]
        # For this serve only: a reload (or stop) cancels them with the other helpers,
        # stopping a command still running like a trigger's.
        helpers += [asyncio.create_task(hook.run_forever()) for hook in hooks.values()]
        self._set_phase("bootstrapping")
        # The queue must exist and be subscribed before the reconcile lists S3: changes
        # made while the listing runs then wait in the queue instead of falling into a gap.
        queue_url = await self.stop.retrying(
            "provisioning the queue" if own.provisioned else "checking the queue",
            functools.partial(self._own_queue_url, clients, own),
            self._set_phase,
            self._explain_queue(self.config.queue.url or "", "[queue] url"),
        )
        if queue_url is None:  # stopped before it existed
            await _cancel(helpers)
            return
        consumers = self._consumers(clients, queue_url, own, mirrors, triggers)
        self.stats.queue_urls = [c.inbox.queue_url for c in consumers]
        trust = await self.stop.retrying(
            "reading the queue policy",
            functools.partial(load_trust, clients.sqs, self.config, self.stats.queue_urls),
            self._set_phase,
        )
        if trust is None:  # stopped first
            await _cancel(helpers)
            return
        self.dispatcher.trust = trust
        deleters = [asyncio.create_task(c.inbox.delete_forever()) for c in consumers]
        publisher = self._publisher(clients, consumers[0])
        if publisher is not None:
            helpers.append(asyncio.create_task(publisher.run(), name="publish state"))
        if self.identity.from_metadata:
            helpers.append(asyncio.create_task(self._leave_when_terminated()))
        try:
            await self._startup(clients, consumers, mirrors)
            if not self.stop.stopping:
                drift = local_drift(
                    mirrors,
                    self.dispatcher,
                    self.stop.serve,
                    self.recorder,
                    self.config.agent.concurrency,
                )
                helpers.append(asyncio.create_task(drift))
                periodic = periodic_reconciles(
                    mirrors,
                    self.dispatcher,
                    self.stop.serve,
                    self.recorder,
                    self.config.agent.concurrency,
                )
                helpers.append(asyncio.create_task(periodic))
                await self._main_loop(consumers, mirrors)
            await self._shutdown()
        finally:
            # After a failure that skipped the shutdown, hand work in flight back now:
            # nothing of it may outlive the clients and the ledger it uses.
            await self.dispatcher.drain(0, self.stop.force)
            await self._stop_deleters(consumers, deleters)
            await _cancel(helpers)
            if publisher is not None and self.stop.exiting and not self._deprovision_on_exit:
                # Tell the fleet view this server stopped on purpose (not crashed).
                try:
                    await asyncio.wait_for(publisher.publish("stopped"), FINAL_PUBLISH_SECONDS)
                except TimeoutError:
                    log.warning("could not publish the stopped state in time")

    def _publisher(self, clients: Clients, ours: Consumer) -> StatePublisher | None:
        """Only a provisioned queue is this server's alone to tag: a fixed ``url`` may be
        shared, and one server's state there would overwrite another's."""
        if ours.watermark is None:
            return None
        return StatePublisher(
            clients.sqs,
            lambda: ours.inbox.queue_url,
            self.identity.instance_id or "",
            self.stats,
            ours.watermark,
        )

    async def _own_queue_url(self, clients: Clients, own: OwnQueue) -> str:
        url = await own.ensure()
        # One cheap call proves the queue answers (and, for a fixed URL, exists).
        await clients.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
        return url

    def _explain_queue(self, url: str, setting: str) -> Callable[[BaseException], str]:
        """Words for a failure to reach the configured queue at ``url``: a queue SQS does
        not know is a setting to fix (the URL or the region), named with its file; the
        daemon keeps retrying all the same (SPEC: it never exits on an AWS error)."""
        region = self.identity.region or self.config.aws.region

        def explain(exc: BaseException) -> str:
            if url and is_missing_queue(exc):
                return missing_queue_advice(url, region, setting, self.config.path)
            return str(exc)

        return explain

    def _consumers(
        self,
        clients: Clients,
        queue_url: str,
        own: OwnQueue,
        mirrors: list[Mirror],
        triggers: list[Trigger],
    ) -> list[Consumer]:
        """The server's own queue feeds every mirror and the triggers without a queue of
        their own; each shared trigger queue feeds only its triggers (one server of the
        fleet takes each marker)."""
        queue = self.config.queue

        def inbox(url: str) -> Inbox:
            return Inbox(clients.sqs, url, queue.wait_time_seconds, queue.visibility_timeout)

        ours = [t for t in triggers if not t.config.queue_url]
        watermark = (
            Watermark(queue.max_receive_count, queue.visibility_timeout)
            if own.provisioned
            else None
        )
        consumers = [
            Consumer(
                inbox(queue_url),
                mirrors,
                ours,
                own=own if own.provisioned else None,
                explain=self._explain_queue(queue.url or "", "[queue] url"),
                watermark=watermark,
            )
        ]
        shared_urls = dict.fromkeys(t.config.queue_url for t in triggers if t.config.queue_url)
        for url in shared_urls:
            shared = [t for t in triggers if t.config.queue_url == url]
            setting = f"[[trigger]] queue_url (trigger {', '.join(t.name for t in shared)})"
            consumers.append(
                Consumer(inbox(url), [], shared, explain=self._explain_queue(url, setting))
            )
        return consumers

    async def _startup(
        self, clients: Clients, consumers: list[Consumer], mirrors: list[Mirror]
    ) -> None:
        directories = [m.config.directory for m in mirrors] + [
            t.config.directory for c in consumers for t in c.triggers
        ]
        for directory in dict.fromkeys(directories):
            try:
                directory.mkdir(parents=True, exist_ok=True)
                # A walk of the whole tree: off the loop, which must keep ticking.
                removed = await asyncio.to_thread(remove_leftover_temp_files, directory)
            except OSError as exc:
                # One directory that cannot be made must not stop the others: its own
                # changes are handed back until it can be, and status says so.
                self.recorder.error("disk", f"{directory}: {exc}")
                log.error("%s: cannot be used, its changes wait: %s", directory, exc)
                continue
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
            await self.stop.retrying(
                "checking the shared queue", check, self._set_phase, consumer.explain
            )
        await bootstrap(mirrors, self.config.agent.concurrency, self.stop, self.recorder)

    async def _main_loop(self, consumers: list[Consumer], mirrors: list[Mirror]) -> None:
        self._set_phase("in sync")
        # Start-up is over: what it freed goes back to the kernel before the agent idles.
        release_free_memory()
        self.notifier.ready(self.stats.line())
        # A poller that fails for good (a bug, not a transient error) takes the others
        # down with it and the daemon exits non-zero for systemd to restart it.
        async with asyncio.TaskGroup() as pollers:
            for consumer in consumers:
                pollers.create_task(self._poll(consumer, mirrors))

    async def _poll(self, consumer: Consumer, mirrors: list[Mirror]) -> None:
        while await self.dispatcher.poll(consumer, self.stop) == "queue gone":
            await self._recover_queue(consumer, mirrors)

    async def _recover_queue(self, consumer: Consumer, mirrors: list[Mirror]) -> None:
        """Our queue was deleted under us: recreate it, then reconcile, because every
        event sent while it was gone is lost."""
        assert consumer.own is not None
        name = consumer.own.name
        self.recorder.error("sqs", f"queue {name} disappeared")
        log.error("queue %s no longer exists: recreating it, then reconciling", name)
        self._set_phase("recreating the queue")
        url = await self.stop.retrying("recreating the queue", consumer.own.ensure, self._set_phase)
        if url is None:
            return
        consumer.inbox.queue_url = url
        await bootstrap(mirrors, self.config.agent.concurrency, self.stop, self.recorder)
        self._set_phase("in sync")
        log.info("queue %s recreated and mirrors reconciled", name)

    async def _leave_when_terminated(self) -> None:
        """Drain and deprovision when Auto Scaling says this instance is terminating."""
        if await lifecycle_terminated(self.stop):
            log.info(
                "Auto Scaling target lifecycle state is Terminated: draining, then"
                " removing this server's queue and subscription"
            )
            self._deprovision_on_exit = True
            self.stop.request_exit()

    async def _shutdown(self) -> None:
        in_flight = self.dispatcher.in_flight
        if self.stop.exiting:
            self.notifier.stopping(f"stopping: {in_flight} message(s) in flight")
        else:
            # Leaving this serve for a new configuration, not exiting: STOPPING=1 would
            # make systemd start its stop timer and SIGKILL us 90 s later. READY=1 from
            # the next serve ends the reload.
            self.notifier.reloading(f"reloading: {in_flight} message(s) in flight")
        await self.dispatcher.drain(DRAIN_DEADLINE_SECONDS, self.stop.force)

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

    # -- what systemd and `s3pull status` see ---------------------------------------------

    def _set_phase(self, phase: str) -> None:
        self.stats.phase = phase
        self.notifier.status(self.stats.line(self.dispatcher.in_flight))

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
            self.notifier.status(self.stats.line(self.dispatcher.in_flight))
            self._write_status()
            await asyncio.sleep(interval)

    def _write_status(self) -> None:
        in_flight = self.dispatcher.in_flight
        self.stats.bandwidth = {
            m.name: m.limiter.report() for m in self._mirrors if m.limiter is not None
        }
        self.metrics.in_flight.set(in_flight)
        try:
            write_snapshot(self.config.agent.state_directory, self.stats.snapshot(in_flight))
        except OSError as exc:  # a full disk must not stop the daemon; say it once a tick
            log.warning("could not write the status file: %s", exc)


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)

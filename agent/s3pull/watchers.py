"""What the daemon watches besides its queue, each a plain coroutine.

Each runs until its stop event is set (or it is cancelled) and returns what it saw; the
daemon decides what follows. None of them raises on a transient failure.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Final

from watchfiles import Change, awatch

from s3pull.aws import TRANSIENT_ERRORS
from s3pull.backoff import Backoff
from s3pull.config import Config, load_config
from s3pull.dispatch import Dispatcher
from s3pull.errors import ConfigError
from s3pull.identity import InstanceMetadata, MetadataUnavailable
from s3pull.metrics import Recorder
from s3pull.mirror import Mirror
from s3pull.paths import TEMP_PREFIX
from s3pull.plan import Executed, ReconcilePlan, execute, plan
from s3pull.stopping import StopSignal, sleep_unless

__all__ = [
    "LIFECYCLE_POLL_SECONDS",
    "config_file_changes",
    "lifecycle_terminated",
    "local_drift",
    "next_config",
    "periodic_reconciles",
    "reconcile_live",
]

log = logging.getLogger(__name__)

LIFECYCLE_POLL_SECONDS: Final = float(os.environ.get("S3PULL_LIFECYCLE_POLL_SECONDS", "15"))
CONFIG_DEBOUNCE_MS: Final = 300
DRIFT_DEBOUNCE_MS: Final = 200
DRIFT_CHECK_MS: Final = 1000  # the longest a watch goes without checking its directories
DRIFT_DIRECTORY_POLL_SECONDS: Final = 1.0  # while every watched directory is gone
DRIFT_RECONCILE_ATTEMPTS: Final = 3
DRIFT_RECONCILE_CONCURRENCY: Final = 8  # a directory that came back, reconciled


async def config_file_changes(path: Path, requested: asyncio.Event, stop: asyncio.Event) -> None:
    """Set ``requested`` whenever the configuration file (an absolute, resolved path)
    changes, until ``stop``.

    The directory is watched, not the file, because editors and config managers replace
    files by renaming.
    """

    def is_config(_change: Change, changed: str) -> bool:
        return Path(changed) == path

    try:
        async for _changes in awatch(
            path.parent,
            watch_filter=is_config,
            stop_event=stop,
            recursive=False,
            debounce=CONFIG_DEBOUNCE_MS,
        ):
            log.info("configuration file %s changed", path)
            requested.set()
    # The directory vanished, no inotify watches left, or (RuntimeError, in a group) a
    # name watchfiles cannot decode.
    except (OSError, RuntimeError, ExceptionGroup) as exc:
        log.warning("not watching %s for changes (SIGHUP still reloads): %s", path, exc)


async def next_config(
    current: Callable[[], Config], requested: asyncio.Event, recorder: Recorder
) -> Config:
    """Wait for a reload request; return the file's configuration once it is valid and
    differs from ``current()``. A broken file is reported and the wait goes on."""
    while True:
        await requested.wait()
        requested.clear()
        running = current()
        try:
            new = load_config(running.path)
        except ConfigError as exc:
            recorder.error("config", f"reload refused: {exc}")
            log.error("configuration reload failed, keeping the running configuration: %s", exc)
            continue
        if new == running:
            log.info("configuration unchanged")
            continue
        return new


async def lifecycle_terminated(stop: StopSignal, metadata: InstanceMetadata | None = None) -> bool:
    """Poll instance metadata until Auto Scaling says this instance is Terminated (True)
    or a stop comes first (False)."""
    metadata = metadata or InstanceMetadata()
    while not stop.stopping:
        await stop.sleep(LIFECYCLE_POLL_SECONDS)
        if stop.stopping:
            break
        try:
            state = await metadata.lifecycle_state()
        except MetadataUnavailable as exc:
            log.debug("lifecycle state unavailable: %s", exc)
            continue
        if state == "Terminated":
            return True
    return False


def _directory_identity(directory: Path) -> tuple[int, int] | None:
    """(device, inode) of a directory, or None when there is none: a directory deleted,
    or replaced (``mv new old``), is a different one to watch."""
    try:
        st = os.stat(directory)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None


async def local_drift(
    mirrors: Sequence[Mirror],
    dispatcher: Dispatcher,
    stop: asyncio.Event,
    recorder: Recorder | None = None,
    concurrency: int = DRIFT_RECONCILE_CONCURRENCY,
) -> None:
    """Hand every file changed below a mirror's directory to the dispatcher's ``repair``,
    until ``stop``.

    A mirror directory that disappears is waited for (the next change recreates it);
    once it is back it is reconciled, since whatever it held is gone, and watched again.
    A watch that fails (a name watchfiles cannot decode, no inotify watches left) is
    started again after a backoff. Nothing here ends the watcher but ``stop``.
    """
    if not mirrors:
        return
    backoff = Backoff()
    lost: list[Mirror] = []
    known = {m: _directory_identity(m.config.directory) for m in mirrors}
    while not stop.is_set():
        watched = {m: _directory_identity(m.config.directory) for m in mirrors}
        for mirror, identity in watched.items():
            if identity is None and mirror not in lost:
                log.warning(
                    "%s: directory %s is gone: waiting for it (the next change recreates it)",
                    mirror.name,
                    mirror.config.directory,
                )
                lost.append(mirror)
            elif (
                identity is not None
                and mirror not in lost
                and (known[mirror] not in (None, identity) or mirror.directory_recreated)
            ):
                # Deleted and made again (by a change, say) between two looks: it is
                # back, just sooner than the watcher could see it gone.
                lost.append(mirror)
        known = watched
        for mirror in [m for m in lost if watched[m] is not None]:
            lost.remove(mirror)
            await _reconcile_returned(mirror, dispatcher, concurrency, stop, recorder)
        present = {m: identity for m, identity in watched.items() if identity is not None}
        if not present:
            await sleep_unless(stop, DRIFT_DIRECTORY_POLL_SECONDS)
            continue
        try:
            missing = [m for m in mirrors if m not in present]
            await _watch(present, missing, dispatcher.repair, stop)
        # watchfiles raises WatchfilesRustInternalError (a RuntimeError), wrapped in an
        # ExceptionGroup by its task group, for a name it cannot decode (not UTF-8).
        except (OSError, RuntimeError, ExceptionGroup) as exc:
            delay = backoff.next()
            causes = exc.exceptions if isinstance(exc, ExceptionGroup) else (exc,)
            log.warning(
                "local drift: watching stopped (%s); watching again in %.0f s",
                "; ".join(f"{type(cause).__name__}: {cause}" for cause in causes),
                delay,
            )
            await sleep_unless(stop, delay)
        else:
            backoff.reset()


async def _watch(
    present: dict[Mirror, tuple[int, int]],
    missing: list[Mirror],
    repair: Callable[[Mirror, Path], Awaitable[None]],
    stop: asyncio.Event,
) -> None:
    """Watch the directories in ``present`` until ``stop``, or until one of them is
    deleted or replaced, or one of ``missing`` is back (then the caller starts over)."""

    def moved() -> bool:
        return (
            any(_directory_identity(m.config.directory) != i for m, i in present.items())
            or any(m.directory_recreated for m in present)
            or any(_directory_identity(m.config.directory) is not None for m in missing)
        )

    changes_seen = awatch(
        *(m.config.directory for m in present),
        stop_event=stop,
        debounce=DRIFT_DEBOUNCE_MS,
        recursive=True,
        ignore_permission_denied=True,
        # Hand back control now and then even when nothing changes, to notice a
        # directory that came back (a deleted one has no watch left to report it).
        rust_timeout=DRIFT_CHECK_MS,
        yield_on_timeout=True,
    )
    try:
        async for changes in changes_seen:
            if moved():
                return
            for _change, changed in sorted(changes, key=lambda c: c[1]):
                path = Path(changed)
                if path.name.startswith(TEMP_PREFIX):
                    continue
                for mirror in present:
                    if path.is_relative_to(mirror.config.directory):
                        await repair(mirror, path)
    finally:
        await changes_seen.aclose()


async def reconcile_live(
    mirror: Mirror, dispatcher: Dispatcher, concurrency: int
) -> tuple[ReconcilePlan, Executed]:
    """A full reconcile of one mirror while its events are applied: each download and
    deletion takes the key's lock, and a file to delete is first looked up in S3, since
    an event may have brought it after the listing (``plan.execute``)."""

    def hold(key: str) -> AbstractAsyncContextManager[None]:
        return dispatcher.holding(mirror, key)

    planned = await plan(mirror)
    return planned, await execute(mirror, planned, concurrency, hold=hold)


async def periodic_reconciles(
    mirrors: Sequence[Mirror],
    dispatcher: Dispatcher,
    stop: asyncio.Event,
    recorder: Recorder,
    concurrency: int,
) -> None:
    """Reconcile each mirror every ``reconcile_interval`` until ``stop``.

    Events are not enough on their own: S3 may send one notification for concurrent
    writes to one key, and a change made while the bucket's notification was broken
    sends none. In sync, a reconcile costs the listing only: the plan compares each
    listed ETag with the ledger's and the file's size and mtime with what the ledger
    recorded, with no GET or HEAD.
    """
    async with asyncio.TaskGroup() as group:
        for mirror in mirrors:
            group.create_task(_reconcile_every(mirror, dispatcher, stop, recorder, concurrency))


async def _reconcile_every(
    mirror: Mirror,
    dispatcher: Dispatcher,
    stop: asyncio.Event,
    recorder: Recorder,
    concurrency: int,
) -> None:
    interval = mirror.config.reconcile_interval
    if interval <= 0:
        recorder.reconcile_scheduled(mirror.name, 0, None)
        return
    while True:
        # From the end of the last one: a slow reconcile never runs back to back.
        recorder.reconcile_scheduled(mirror.name, interval, time.time() + interval)
        if await sleep_unless(stop, interval):
            return
        started = time.monotonic()
        try:
            planned, executed = await reconcile_live(mirror, dispatcher, concurrency)
        # Anything (AWS, the disk, a busy ledger): the next one tries again, and status
        # says FAILING meanwhile. Nothing here may end the periodic reconciles for good.
        except Exception as exc:
            recorder.error("reconcile", f"{mirror.name}: periodic reconcile failed: {exc}")
            log.warning(
                "%s: periodic reconcile failed, next in %.0f s: %s: %s",
                mirror.name,
                interval,
                type(exc).__name__,
                exc,
            )
            continue
        seconds = time.monotonic() - started
        recorder.reconciled(
            mirror.name, executed.downloaded, executed.deleted, len(executed.failures), seconds
        )
        log.info(
            "%s: periodic reconcile in %.1f s: %d downloaded, %d deleted, %d up to date, %d failed",
            mirror.name,
            seconds,
            executed.downloaded,
            executed.deleted,
            planned.up_to_date,
            len(executed.failures),
        )


async def _reconcile_returned(
    mirror: Mirror,
    dispatcher: Dispatcher,
    concurrency: int,
    stop: asyncio.Event,
    recorder: Recorder | None,
) -> None:
    """A mirror directory is back after it was deleted: make it equal to S3 again, in
    turn with the events applied meanwhile (each key under its lock)."""
    log.warning("%s: directory %s is back: reconciling it", mirror.name, mirror.config.directory)
    mirror.directory_recreated = False
    backoff = Backoff()
    for attempt in range(1, DRIFT_RECONCILE_ATTEMPTS + 1):
        try:
            _planned, executed = await reconcile_live(mirror, dispatcher, concurrency)
        except TRANSIENT_ERRORS as exc:
            log.warning("%s: reconcile failed (attempt %d): %s", mirror.name, attempt, exc)
        else:
            if not executed.failures:
                log.info(
                    "%s: reconciled %s: %d downloaded, %d deleted",
                    mirror.name,
                    mirror.config.directory,
                    executed.downloaded,
                    executed.deleted,
                )
                return
        if await sleep_unless(stop, backoff.next()):
            return
    if recorder is not None:  # status says FAILING until a restart reconciles it
        recorder.error("reconcile", f"{mirror.name}: could not be reconciled")
    log.error(
        "%s: could not reconcile %s after it came back; its events are still applied."
        " Restart the agent to retry (`s3pull sync` waits for it to stop)",
        mirror.name,
        mirror.config.directory,
    )

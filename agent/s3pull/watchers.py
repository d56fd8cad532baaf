"""What the daemon watches besides its queue, each a plain coroutine.

Each runs until its stop event is set (or it is cancelled) and returns what it saw; the
daemon decides what follows. None of them raises on a transient failure.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Final

from watchfiles import Change, awatch

from s3pull.aws import TRANSIENT_ERRORS
from s3pull.config import Config, load_config
from s3pull.errors import ConfigError
from s3pull.identity import InstanceMetadata, MetadataUnavailable
from s3pull.metrics import Recorder
from s3pull.mirror import Mirror
from s3pull.paths import TEMP_PREFIX
from s3pull.provision import OwnQueue
from s3pull.stopping import StopSignal

__all__ = [
    "HEARTBEAT_INTERVAL_SECONDS",
    "LIFECYCLE_POLL_SECONDS",
    "config_file_changes",
    "heartbeat",
    "lifecycle_terminated",
    "local_drift",
    "next_config",
]

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL_SECONDS: Final = 3600.0
LIFECYCLE_POLL_SECONDS: Final = float(os.environ.get("S3PULL_LIFECYCLE_POLL_SECONDS", "15"))
CONFIG_DEBOUNCE_MS: Final = 300
DRIFT_DEBOUNCE_MS: Final = 200


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
    except OSError as exc:  # the directory vanished, or no inotify watches left
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


async def heartbeat(own: OwnQueue, queue_url: Callable[[], str]) -> None:
    """Refresh the heartbeat tag ``gc`` uses to tell a live server from a lost one,
    until cancelled. ``queue_url`` is read each time: a lost queue is recreated."""
    while True:
        await asyncio.sleep(HEARTBEAT_INTERVAL_SECONDS)
        try:
            await own.heartbeat(queue_url())
        except TRANSIENT_ERRORS as exc:
            log.warning("could not refresh the queue's heartbeat tag: %s", exc)


async def local_drift(
    mirrors: Sequence[Mirror],
    repair: Callable[[Mirror, Path], Awaitable[None]],
    stop: asyncio.Event,
) -> None:
    """Hand every file changed below a mirror's directory to ``repair``, until ``stop``."""
    if not mirrors:
        return
    async for changes in awatch(
        *(m.config.directory for m in mirrors),
        stop_event=stop,
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
                    await repair(mirror, path)

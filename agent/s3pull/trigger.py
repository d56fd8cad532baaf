"""Batch triggers: a marker object completes a batch; download it, then run a command.

marker event -> already ran? -> read the marker (empty: the batch is what S3 lists now;
otherwise a manifest to wait for) -> download the batch atomically -> run ``command``
(no shell) in the batch directory -> record the run. Any failure raises, so the message
comes back and, after ``max_receive_count`` receives, is dead-lettered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from botocore.exceptions import ClientError

from s3pull.aws import is_missing
from s3pull.config import MirrorConfig, TriggerConfig
from s3pull.errors import S3PullError, UnsafeKey
from s3pull.events import ObjectChange
from s3pull.ledger import Ledger
from s3pull.mirror import Mirror, Observer, RemoteObject
from s3pull.paths import ensure_directory, safe_parts

__all__ = ["Manifest", "Trigger", "TriggerFailed", "TriggerOutcome", "parse_manifest"]

log = logging.getLogger(__name__)

TriggerOutcome = Literal[
    "succeeded",  # the command ran and exited 0
    "already-ran",  # a redelivered copy of a marker event that already succeeded
    "superseded",  # the marker was overwritten since: its own event will run the batch
    "marker-gone",  # the marker was deleted before we got to it: the batch was withdrawn
]

KILL_GRACE_SECONDS: Final = 10.0  # SIGTERM -> this long -> SIGKILL
MANIFEST_POLL_FIRST: Final = 0.5
MANIFEST_POLL_MAX: Final = 5.0
MANIFEST_MAX_BYTES: Final = 1 << 20
RELAY_CHUNK: Final = 1 << 16
_ETAG = re.compile(r'^"?([0-9a-fA-F]{32}(-\d+)?)"?$')


class TriggerFailed(S3PullError):
    """The batch could not be completed or the command failed; the message comes back."""


class _Skip(Exception):
    """The marker event needs no run; carries the outcome to report."""

    def __init__(self, outcome: TriggerOutcome) -> None:
        self.outcome: TriggerOutcome = outcome


@dataclass(frozen=True, slots=True)
class Manifest:
    files: tuple[tuple[str, str | None], ...]  # (key relative to the batch prefix, ETag)


def parse_manifest(text: str) -> Manifest:
    """One file per line: ``<relative key>`` optionally followed by a space and its ETag.

    Keys may contain spaces, so only a last word shaped like an ETag is taken as one.
    """
    files: list[tuple[str, str | None]] = []
    for raw in text.splitlines():
        line = raw.rstrip("\r")
        if not line.strip():
            continue
        name, _, last = line.rpartition(" ")
        match = _ETAG.match(last)
        if name and match:
            files.append((name, match.group(1).lower()))
        else:
            files.append((line, None))
    return Manifest(tuple(files))


class Trigger:
    """One ``[[trigger]]``: recognises its markers and runs their batches."""

    def __init__(
        self,
        config: TriggerConfig,
        s3: Any,
        ledger: Ledger,
        concurrency: int,
        observer: Observer | None = None,
    ) -> None:
        self.config = config
        self.name = config.name
        self._s3 = s3
        self._ledger = ledger
        self._concurrency = concurrency
        # Batch files are written from the trigger's own directory down, with the same
        # safe walk as mirrors; the ledger remembers them under "trigger:<name>".
        self._files = Mirror(
            MirrorConfig(
                name=f"trigger:{config.name}",
                bucket=config.bucket,
                prefix=config.prefix,
                directory=config.directory,
                delete=False,
            ),
            s3,
            ledger,
            observer,
        )

    def is_marker(self, change: ObjectChange) -> bool:
        return (
            change.kind == "created"
            and self.config.covers(change.bucket, change.key)
            and change.key.rsplit("/", 1)[-1] == self.config.marker
        )

    def batch_prefix(self, marker_key: str) -> str:
        return marker_key[: len(marker_key) - len(self.config.marker)]

    async def run(self, change: ObjectChange) -> TriggerOutcome:
        """Complete and run the batch ``change`` (a marker) stands for.

        Raises ``UnsafeKey`` for a batch that must not be written (refused for good) and
        ``TriggerFailed`` (or an AWS/OS error) for one that should be tried again.
        """
        event_id = _event_id(change)
        if self._ledger.trigger_ran(self.name, event_id):
            return "already-ran"
        batch_prefix = self.batch_prefix(change.key)
        batch_parts = self._batch_parts(change.key, batch_prefix)
        try:
            marker = await self._read_marker(change)
        except _Skip as skip:
            return skip.outcome
        tag = f"{self.name} {batch_prefix or '/'}"
        objects = await self._complete_batch(change.key, batch_prefix, marker, tag)
        plan = await self._files.plan(objects, under=batch_prefix)
        if plan.refused:
            # Running the business process on a batch with a file missing would be worse
            # than not running it: refuse the batch as a whole.
            raise plan.refused[0]
        executed = await self._files.execute(plan, self._concurrency)
        if executed.failures or executed.refused:
            missing = len(executed.failures) + executed.refused
            raise TriggerFailed(f"{tag}: {missing} file(s) could not be downloaded")
        batch_dir = ensure_directory(self.config.directory, batch_parts, change.key)
        await self._run_command(change, batch_prefix, batch_dir, tag)
        self._ledger.record_trigger_run(self.name, event_id, batch_prefix)
        return "succeeded"

    def _batch_parts(self, marker_key: str, batch_prefix: str) -> tuple[str, ...]:
        relative = batch_prefix[len(self.config.prefix) :].rstrip("/")
        if not relative:
            return ()
        # Validate the batch's own path like any key: no traversal, no symlink.
        return safe_parts(self.config.prefix + relative, self.config.prefix, self.config.directory)

    async def _read_marker(self, change: ObjectChange) -> Manifest | None:
        """None for an empty marker, a Manifest otherwise; raises _Skip when no run is due."""
        try:
            response = await self._s3.get_object(Bucket=self.config.bucket, Key=change.key)
        except ClientError as exc:
            if is_missing(exc):
                raise _Skip("marker-gone") from None
            raise
        async with response["Body"] as body:
            current = str(response.get("ETag", "")).strip('"')
            if change.etag and current and current != change.etag:
                raise _Skip("superseded")
            if int(response["ContentLength"]) == 0:
                return None
            if int(response["ContentLength"]) > MANIFEST_MAX_BYTES:
                raise UnsafeKey(change.key, f"manifest larger than {MANIFEST_MAX_BYTES} bytes")
            text = (await body.read()).decode("utf-8", errors="replace")
        return parse_manifest(text)

    async def _complete_batch(
        self, marker_key: str, batch_prefix: str, manifest: Manifest | None, tag: str
    ) -> list[RemoteObject]:
        """The batch's objects, once complete: at once for an empty marker, else when
        every file the manifest lists is in S3 with its ETag (notifications are unordered,
        so the marker can come first)."""
        deadline = time.monotonic() + self.config.manifest_timeout_seconds
        pause = MANIFEST_POLL_FIRST
        while True:
            listing = await self._files.list_remote(under=batch_prefix)
            objects = [obj for obj in listing if obj.key != marker_key]
            if manifest is None:
                return objects
            missing = _missing(manifest, batch_prefix, objects)
            if not missing:
                return objects
            if time.monotonic() >= deadline:
                raise TriggerFailed(
                    f"{tag}: after {self.config.manifest_timeout_seconds} s the manifest still"
                    f" waits for {len(missing)} file(s): {', '.join(missing[:5])}"
                )
            log.info("%s: waiting for %d file(s) the manifest lists", tag, len(missing))
            await asyncio.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 2, MANIFEST_POLL_MAX)

    async def _run_command(
        self, change: ObjectChange, batch_prefix: str, batch_dir: Path, tag: str
    ) -> None:
        env = {
            **os.environ,
            "S3PULL_TRIGGER": self.name,
            "S3PULL_BUCKET": change.bucket,
            "S3PULL_KEY": change.key,
            "S3PULL_BATCH_PREFIX": batch_prefix,
            "S3PULL_BATCH_DIR": str(batch_dir),
            "S3PULL_EVENT_TIME": change.event_time,
        }
        started = time.monotonic()
        log.info("%s: running %s", tag, self.config.command[0])
        # No shell: argv exactly as configured. A session of its own makes the command
        # the leader of a process group, so a timeout can stop everything it started.
        process = await asyncio.create_subprocess_exec(
            *self.config.command,
            cwd=batch_dir,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        assert process.stdout is not None and process.stderr is not None
        relays = [
            asyncio.create_task(_relay(process.stdout, f"{tag} [stdout]")),
            asyncio.create_task(_relay(process.stderr, f"{tag} [stderr]")),
        ]
        try:
            code = await asyncio.wait_for(process.wait(), self.config.timeout_seconds)
        except TimeoutError:
            log.error(
                "%s: timed out after %d s, stopping its process group",
                tag,
                self.config.timeout_seconds,
            )
            await _stop_group(process, tag)
            raise TriggerFailed(f"{tag}: timed out after {self.config.timeout_seconds} s") from None
        except asyncio.CancelledError:
            log.warning("%s: agent stopping, stopping the command's process group", tag)
            await asyncio.shield(_stop_group(process, tag))
            raise
        finally:
            # Output still held open by a child that outlived the command is not ours
            # to wait for.
            _done, pending = await asyncio.wait(relays, timeout=1.0)
            for relay in pending:
                relay.cancel()
        elapsed = time.monotonic() - started
        if code != 0:
            raise TriggerFailed(f"{tag}: command exited with status {code} after {elapsed:.1f} s")
        log.info("%s: command succeeded in %.1f s", tag, elapsed)


def _event_id(change: ObjectChange) -> str:
    """What tells one marker upload from another, and equals itself on redelivery."""
    return "|".join((change.key, change.sequencer or "", change.event_time, change.etag or ""))


def _missing(manifest: Manifest, batch_prefix: str, objects: list[RemoteObject]) -> list[str]:
    present = {obj.key: obj.etag for obj in objects}
    return [
        name
        for name, etag in manifest.files
        if (batch_prefix + name) not in present
        or (etag is not None and (present[batch_prefix + name] or "").lower() != etag)
    ]


async def _relay(stream: asyncio.StreamReader, tag: str) -> None:
    """Log a command's output line by line. Read in chunks rather than readline(): a line
    over the reader's limit would stop the relay, fill the pipe and hang the command."""
    pending = b""
    while chunk := await stream.read(RELAY_CHUNK):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        if len(pending) >= RELAY_CHUNK:  # an endless line: log it in pieces
            lines.append(pending)
            pending = b""
        for line in lines:
            log.info("%s %s", tag, line.decode("utf-8", errors="replace").rstrip())
    if pending:
        log.info("%s %s", tag, pending.decode("utf-8", errors="replace").rstrip())


async def _stop_group(process: asyncio.subprocess.Process, tag: str) -> None:
    """SIGTERM the whole process group, wait a grace period, then SIGKILL it.

    The group is named by the leader's pid, and that number is only ours while the leader
    is unreaped or something it started is still in the group. Once the group is empty the
    kernel may hand the number to a process that starts a group of its own (pid_max is
    32768 on many machines), so after the leader's exit the group is signalled only if it
    still has members and none of them holds the leader's pid: a group that reused the
    number would be led by a process with that pid.
    """

    def signal_group(signum: signal.Signals) -> None:
        if process.returncode is not None:
            members = _group_members(process.pid)
            if not members or process.pid in members:
                return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signum)
            log.info("%s: sent %s to process group %d", tag, signum.name, process.pid)

    for signum in (signal.SIGTERM, signal.SIGKILL):
        signal_group(signum)
        try:
            await asyncio.wait_for(process.wait(), KILL_GRACE_SECONDS)
        except TimeoutError:
            continue
        # The leader is gone; make sure nothing it started lingers in the group.
        signal_group(signal.SIGKILL)
        return


def _group_members(pgid: int) -> set[int]:
    """The pids of the processes in process group ``pgid``, from /proc."""
    members = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as stat:
                # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
                fields = stat.read().rpartition(b")")[2].split()
        except OSError:  # exited since the listing
            continue
        if int(fields[2]) == pgid:
            members.add(int(entry.name))
    return members

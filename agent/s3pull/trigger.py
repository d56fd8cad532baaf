"""Batch triggers: a marker object completes a batch; download it, then run a command.

marker event -> a batch marker? -> read the marker from S3 -> this version already ran?
-> (empty: the batch is what S3 lists now; otherwise a manifest to wait for) -> a free slot
(``max_parallel``) -> download the batch atomically -> run ``command`` (no shell, a clean
environment) in the batch directory -> stop what it left in its process group -> record
the run. With ``results``, every attempt that read its marker also writes its outcome
and output to S3 (results.py), success or not. Any failure raises, so the message comes
back and, after ``max_receive_count`` receives, is dead-lettered.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, NamedTuple

from botocore.exceptions import ClientError

from s3pull.aws import is_gone
from s3pull.command import clean_environment, run_command
from s3pull.config import MirrorConfig, TriggerConfig
from s3pull.errors import S3PullError, UnsafeKey
from s3pull.events import ObjectChange
from s3pull.ledger import Ledger, patiently
from s3pull.mirror import Mirror, Observer
from s3pull.paths import ensure_directory, safe_parts
from s3pull.plan import RemoteObject, execute, list_remote, plan
from s3pull.results import Output, Result, Results, RunResult, utc

__all__ = ["Manifest", "Trigger", "TriggerFailed", "TriggerOutcome", "parse_manifest"]

log = logging.getLogger(__name__)

TriggerOutcome = Literal[
    "succeeded",  # the command ran and exited 0
    "succeeded-empty",  # it ran and exited 0 on a batch with no files (warned, counted)
    "already-ran",  # this version of the marker object already ran (a replayed event)
    "superseded",  # the marker was overwritten since: its own event will run the batch
    "marker-gone",  # the marker was deleted before we got to it: the batch was withdrawn
]

MANIFEST_POLL_FIRST: Final = 0.5
MANIFEST_POLL_MAX: Final = 5.0
MANIFEST_MAX_BYTES: Final = 1 << 20
_ETAG = re.compile(r'^"?([0-9a-fA-F]{32}(-\d+)?)"?$')


class TriggerFailed(S3PullError):
    """The batch could not be completed or the command failed; the message comes back."""


class _Skip(Exception):
    """The marker event needs no run; carries the outcome to report."""

    def __init__(self, outcome: TriggerOutcome) -> None:
        self.outcome: TriggerOutcome = outcome


class _Marker(NamedTuple):
    version: str  # which version of the marker object, as S3 says: the run's identity
    manifest: Manifest | None  # None for an empty marker
    etag: str  # as S3 answered, for the run's result
    version_id: str | None


@dataclass(slots=True)
class _Attempt:
    """What one attempt got to, for its result: filled in as it goes."""

    started: float = dataclasses.field(default_factory=time.time)
    files: int = 0
    bytes: int = 0
    exit_status: int | None = None
    timed_out: bool = False
    output: Output = dataclasses.field(default_factory=Output)


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
        results: Results | None = None,
    ) -> None:
        self.config = config
        self.name = config.name
        self.results = results  # where each run's outcome goes, if anywhere
        self._s3 = s3
        self._ledger = ledger
        self._concurrency = concurrency
        # The prefix is a folder: "incoming" means "incoming/" (SPEC "Prefixes are folders").
        prefix = config.prefix
        self._folder = prefix if not prefix or prefix.endswith("/") else prefix + "/"
        # At most max_parallel batches download and run at once, however many markers
        # one message or one receive brings.
        self._slots = asyncio.Semaphore(config.max_parallel)
        # Batch files are written from the trigger's own directory down, with the same
        # safe walk as mirrors; the ledger remembers them under "trigger:<name>".
        self._files = Mirror(
            MirrorConfig(
                name=f"trigger:{config.name}",
                bucket=config.bucket,
                prefix=self._folder,
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
            and change.bucket == self.config.bucket
            and change.key.startswith(self._folder)
            and change.key.rsplit("/", 1)[-1] == self.config.marker
        )

    def batch_prefix(self, marker_key: str) -> str:
        return marker_key[: len(marker_key) - len(self.config.marker)]

    async def run(self, change: ObjectChange, attempt: int = 1) -> TriggerOutcome:
        """Complete and run the batch ``change`` (a marker) stands for.

        Raises ``UnsafeKey`` for a marker or batch that must not be run or written
        (refused for good) and ``TriggerFailed`` (or an AWS/OS error) for one that should
        be tried again. ``attempt`` (the message's receive count) goes into the result.
        """
        batch_prefix = self.batch_prefix(change.key)
        batch_parts = self._batch_parts(change.key, batch_prefix)
        try:
            marker = await self._read_marker(change)
        except _Skip as skip:
            return skip.outcome
        progress = _Attempt()
        try:
            outcome = await self._run_batch(change, batch_prefix, batch_parts, marker, progress)
        except asyncio.CancelledError:
            raise  # the agent is stopping: the message comes back, this was no attempt
        except UnsafeKey:
            raise  # refused for good: there was no run to report
        except Exception as exc:
            await self._report(change, batch_prefix, marker, progress, attempt, exc)
            raise
        await self._report(change, batch_prefix, marker, progress, attempt, None)
        return outcome

    async def _run_batch(
        self,
        change: ObjectChange,
        batch_prefix: str,
        batch_parts: tuple[str, ...],
        marker: _Marker,
        progress: _Attempt,
    ) -> TriggerOutcome:
        tag = f"{self.name} {batch_prefix}"
        objects = await self._complete_batch(change.key, batch_prefix, marker.manifest, tag)
        progress.files = len(objects)
        progress.bytes = sum(obj.size for obj in objects)
        if not objects:
            # Per SPEC the batch is what S3 lists, so the command still runs; but an empty
            # marker uploaded before its files is the likeliest cause: say so.
            log.warning(
                "%s: no files under %s besides the marker: running the command on an empty"
                " batch (was the marker uploaded before its files?)",
                tag,
                batch_prefix,
            )
        async with self._slots:
            batch = await plan(self._files, objects, under=batch_prefix)
            if batch.refused:
                # Running the business process on a batch with a file missing would be
                # worse than not running it: refuse the batch as a whole.
                raise batch.refused[0]
            executed = await execute(
                self._files, batch, self._concurrency, label=f"batch {batch_prefix}"
            )
            if executed.failures or executed.refused:
                missing = len(executed.failures) + executed.refused
                raise TriggerFailed(f"{tag}: {missing} file(s) could not be downloaded")
            if archived := len(batch.archived) + executed.archived:
                # A mirror may skip what it cannot read; a batch with a file missing must
                # not run (and would then be recorded as run): retry until S3 serves it.
                raise TriggerFailed(
                    f"{tag}: {archived} file(s) are archived in S3 (GLACIER or DEEP_ARCHIVE,"
                    " not restored): the command runs once they are restored"
                )
            batch_dir = ensure_directory(self.config.directory, batch_parts, change.key)
            progress.started = time.time()  # the run proper starts with the command
            await self._run_command(change, batch_prefix, batch_dir, tag, progress)
        # The command ran: wait out another process's lock rather than hand the message
        # back, which would run it again.
        await patiently(self._ledger.record_trigger_run, self.name, marker.version, batch_prefix)
        return "succeeded" if objects else "succeeded-empty"

    async def _report(
        self,
        change: ObjectChange,
        batch_prefix: str,
        marker: _Marker,
        progress: _Attempt,
        attempt: int,
        failure: BaseException | None,
    ) -> None:
        """Write the attempt's result, if results are configured. Never raises: a result
        that cannot be written is logged and counted (Results.write), and the run stands."""
        if self.results is None:
            return
        ended = time.time()
        result: Result = (
            "succeeded" if failure is None else "timed out" if progress.timed_out else "failed"
        )
        output = progress.output
        record = RunResult(
            trigger=self.name,
            bucket=change.bucket,
            batch=batch_prefix,
            marker_key=change.key,
            marker_etag=marker.etag,
            marker_version_id=marker.version_id,
            instance=self.results.instance,
            attempt=attempt,
            started=utc(progress.started),
            ended=utc(ended),
            seconds=round(max(0.0, ended - progress.started), 3),
            result=result,
            exit_status=progress.exit_status,
            timed_out=progress.timed_out,
            error=None if failure is None else (str(failure) or type(failure).__name__),
            files=progress.files,
            bytes=progress.bytes,
            output_tail=list(output.tail),
            output_bytes=output.total_bytes,
            log_truncated=output.truncated,
        )
        # Shielded: a stop that comes while the result is uploading does not cut it off
        # (the upload is bounded by the client's own timeouts).
        await asyncio.shield(self.results.write(record, output))

    def _batch_parts(self, marker_key: str, batch_prefix: str) -> tuple[str, ...]:
        """The batch's path below the trigger's directory.

        A marker counts only at ``<prefix><batch>/<marker>``, ``<batch>`` one or more
        non-empty segments, none "." or "..": a marker at the top would run the command
        among other batches' files, and "b1//" would run batch "b1" on another listing.
        """
        relative = batch_prefix[len(self._folder) : -1]  # batch_prefix ends in "/"
        if not batch_prefix.startswith(self._folder) or not relative:
            raise UnsafeKey(
                marker_key, f"is not in a batch (a marker counts only at {self._folder}<batch>/)"
            )
        if any(segment in ("", ".", "..") for segment in relative.split("/")):
            raise UnsafeKey(marker_key, "has an empty, '.' or '..' segment in its batch name")
        # Validate the batch's own path like any key: no NUL, no over-long name, no symlink.
        return safe_parts(self._folder + relative, self._folder, self.config.directory)

    async def _read_marker(self, change: ObjectChange) -> _Marker:
        """The marker's version and manifest (None when empty), read from S3, not from
        the event; raises _Skip when no run is due."""
        try:
            response = await self._s3.get_object(Bucket=self.config.bucket, Key=change.key)
        except ClientError as exc:
            if await is_gone(self._s3, self.config.bucket, change.key, exc):
                raise _Skip("marker-gone") from None
            raise
        async with response["Body"] as body:
            current = str(response.get("ETag", "")).strip('"')
            if (change.etag and current and current != change.etag) or (
                change.version_id and response.get("VersionId") not in (None, change.version_id)
            ):
                raise _Skip("superseded")
            version = _marker_version(change.key, response)
            # Whatever the event says (its time, its eTag), this version of the marker
            # object runs once: a replayed or forged event cannot run it again.
            if self._ledger.trigger_ran(self.name, version):
                raise _Skip("already-ran")
            etag, version_id = current, response.get("VersionId")
            if int(response["ContentLength"]) == 0:
                return _Marker(version, None, etag, version_id)
            if int(response["ContentLength"]) > MANIFEST_MAX_BYTES:
                raise UnsafeKey(change.key, f"manifest larger than {MANIFEST_MAX_BYTES} bytes")
            text = (await body.read()).decode("utf-8", errors="replace")
        return _Marker(version, parse_manifest(text), etag, version_id)

    async def _complete_batch(
        self, marker_key: str, batch_prefix: str, manifest: Manifest | None, tag: str
    ) -> list[RemoteObject]:
        """The batch's objects, once complete: at once for an empty marker, else when
        every file the manifest lists is in S3 with its ETag (notifications are unordered,
        so the marker can come first). A file the manifest names with an ETag is then
        downloaded with that ETag only: one overwritten since this listing fails the
        attempt rather than reach the command."""
        deadline = time.monotonic() + self.config.manifest_timeout_seconds
        pause = MANIFEST_POLL_FIRST
        while True:
            listing = await list_remote(self._files, under=batch_prefix)
            objects = [obj for obj in listing if obj.key != marker_key]
            if manifest is None:
                return objects
            missing = _missing(manifest, batch_prefix, objects)
            if not missing:
                return _pinned(manifest, batch_prefix, objects)
            if time.monotonic() >= deadline:
                raise TriggerFailed(
                    f"{tag}: after {self.config.manifest_timeout_seconds} s the manifest still"
                    f" waits for {len(missing)} file(s): {', '.join(missing[:5])}"
                )
            log.info("%s: waiting for %d file(s) the manifest lists", tag, len(missing))
            await asyncio.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 2, MANIFEST_POLL_MAX)

    async def _run_command(
        self,
        change: ObjectChange,
        batch_prefix: str,
        batch_dir: Path,
        tag: str,
        progress: _Attempt,
    ) -> None:
        env = clean_environment(
            {
                **dict(self.config.environment),
                "S3PULL_TRIGGER": self.name,
                "S3PULL_BUCKET": change.bucket,
                "S3PULL_KEY": change.key,
                "S3PULL_BATCH_PREFIX": batch_prefix,
                "S3PULL_BATCH_DIR": str(batch_dir),
                "S3PULL_EVENT_TIME": change.event_time,
            }
        )
        started = time.monotonic()
        log.info("%s: running %s", tag, self.config.command[0])
        try:
            code = await run_command(
                self.config.command,
                batch_dir,
                env,
                self.config.timeout_seconds,
                tag,
                progress.output.line,
            )
        except TimeoutError:
            progress.timed_out = True
            raise TriggerFailed(f"{tag}: timed out after {self.config.timeout_seconds} s") from None
        elapsed = time.monotonic() - started
        progress.exit_status = code
        if code != 0:
            raise TriggerFailed(f"{tag}: command exited with status {code} after {elapsed:.1f} s")
        log.info("%s: command succeeded in %.1f s", tag, elapsed)


def _marker_version(key: str, response: dict[str, Any]) -> str:
    """Which version of the marker object S3 answered with: its VersionId on a versioned
    bucket, else its ETag and LastModified (an upload of the same bytes gets a new
    LastModified, to the second). Nothing here comes from the event."""
    version_id = response.get("VersionId")
    if version_id and version_id != "null":  # "null": written while versioning was off
        return f"{key}|version:{version_id}"
    modified = response.get("LastModified")
    if modified is None:
        raise TriggerFailed(f"{key}: S3 sent no LastModified for the marker")
    etag = str(response.get("ETag", "")).strip('"')
    return f"{key}|etag:{etag}|modified:{modified.isoformat()}"


def _pinned(
    manifest: Manifest, batch_prefix: str, objects: list[RemoteObject]
) -> list[RemoteObject]:
    promised = {batch_prefix + name: etag for name, etag in manifest.files if etag is not None}
    return [
        dataclasses.replace(obj, if_match=promised[obj.key]) if obj.key in promised else obj
        for obj in objects
    ]


def _missing(manifest: Manifest, batch_prefix: str, objects: list[RemoteObject]) -> list[str]:
    present = {obj.key: obj.etag for obj in objects}
    return [
        name
        for name, etag in manifest.files
        if (batch_prefix + name) not in present
        or (etag is not None and (present[batch_prefix + name] or "").lower() != etag)
    ]

"""Keep one local directory equal to one S3 prefix, one change at a time.

``apply`` handles one event, ``repair`` one file changed on disk; the full reconcile
(``plan``/``execute``) lives in ``s3pull.plan`` and uses the public methods here. Both
treat the event as a hint only: what gets written is whatever S3 holds when we ask.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, Protocol

from botocore.exceptions import ClientError

from s3pull.aws import error_code, is_gone
from s3pull.bandwidth import TokenBucket
from s3pull.config import MirrorConfig
from s3pull.download import GONE, NOT_MODIFIED, Downloaded, download
from s3pull.errors import PathCollision, S3PullError, UnsafeKey
from s3pull.events import ObjectChange
from s3pull.ledger import Entry, Ledger
from s3pull.logfields import SUMMARY, journal_fields
from s3pull.paths import (
    DEFAULT_ATTRIBUTES,
    Attributes,
    is_folder_placeholder,
    is_utf8,
    local_stat,
    remove_file,
    repair_attributes,
    repair_directory_attributes,
    safe_parts,
    shown_name,
)
from s3pull.repeats import Repeats
from s3pull.walk import walk_files

__all__ = [
    "ARCHIVED_STORAGE_CLASSES",
    "Applied",
    "CollisionPending",
    "Mirror",
    "Observer",
    "Outcome",
    "file_matches",
]

log = logging.getLogger(__name__)

Outcome = Literal[
    "downloaded",  # the file now holds the object's current content
    "unchanged",  # the file already held it (conditional GET said 304)
    "deleted",  # the object is gone and so is the file now
    "absent",  # the object is gone and there was no file
    "kept",  # the object is gone but the mirror does not mirror deletions
    "attributes",  # the file was right but its mode or group was not: put back
    "stale",  # an older event than one already applied: skipped
    "placeholder",  # a "folder/" key: nothing to write
    "refused",  # an unsafe key (or a real file/directory collision): never written
    "archived",  # archived in S3, not restored, and archived = "skip": left alone
    "restoring",  # archived in S3: restore asked (archived = "restore"), fetched once done
]

# "Working with archived objects" (S3 User Guide): objects in these classes cannot be read
# until restored; GetObject answers 403 InvalidObjectState. (GLACIER_IR is readable.
# INTELLIGENT_TIERING's opt-in archive tiers answer InvalidObjectState too, which is what
# ``_fetch_once`` acts on, so "skip" covers them; but a restore there takes no Days, so
# "restore" fails on them and the change is retried: not handled yet.)
ARCHIVED_STORAGE_CLASSES = frozenset({"GLACIER", "DEEP_ARCHIVE"})
# archived = "restore": how long the restored copy stays readable, and how fast it comes.
# The agent fetches it as soon as ObjectRestore:Completed arrives; 7 days outlasts a
# per-server queue's 4-day retention, so a server that was down still finds it readable.
# Standard: 3-5 hours from GLACIER, within 12 from DEEP_ARCHIVE (Expedited does not
# serve DEEP_ARCHIVE; Bulk is cheaper but takes up to 48 hours).
RESTORE_DAYS = 7
RESTORE_TIER = "Standard"


class CollisionPending(S3PullError):
    """Something no longer in S3 is in a key's way and cannot be removed yet: retry later."""


@dataclass(frozen=True, slots=True)
class Applied:
    outcome: Outcome
    size: int = 0  # bytes written (0 unless downloaded)


class Observer(Protocol):
    """Told about every change a mirror applies or refuses (the daemon's counters)."""

    def applied(self, mirror: str, key: str, applied: Applied) -> None: ...

    def refused(self, mirror: str, refusal: UnsafeKey) -> None: ...

    def held_back(self, mirror: str, deletions: int, reason: str | None) -> None: ...


def file_matches(entry: Entry | None, st: os.stat_result | None) -> bool:
    """Is the local file still exactly what we last wrote (not drifted)?"""
    return (
        entry is not None
        and entry.present
        and st is not None
        and st.st_size == entry.size
        and st.st_mtime_ns == entry.mtime_ns
    )


def _is_directory(path: Path) -> bool:
    """A real directory (not a symlink to one) at ``path``."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _confirmed_sequencer(event: ObjectChange | None, served_etag: str | None) -> str | None:
    """The event's sequencer, when S3 just served the version the event names (its ETag);
    otherwise None. Only a confirmed event may make older ones skippable."""
    if event is None or event.kind != "created" or not event.etag or not served_etag:
        return None
    return event.sequencer if event.etag.lower() == served_etag.lower() else None


# Outcomes that change what a reader of the directory sees: these wake ``on_change``.
CHANGED_OUTCOMES: Final = frozenset({"downloaded", "deleted"})


class Mirror:
    """One ``[[mirror]]``: routes keys, applies changes, repairs drift."""

    def __init__(
        self,
        config: MirrorConfig,
        s3: Any,
        ledger: Ledger,
        observer: Observer | None = None,
        repeats: Repeats | None = None,
        on_changed: Callable[[Path], None] | None = None,
    ) -> None:
        self.config = config
        self.name = config.name
        self._s3 = s3
        self._ledger = ledger
        self._observer = observer
        # Where this mirror's failures are logged: an unwritable directory fails every
        # file the same way, and is said once per cause (the daemon shares one).
        self.repeats = repeats or Repeats()
        self._on_changed = on_changed
        self.directory_recreated = False
        self._left_alone_said: int | None = None  # how many excluded files we last told of
        # Archived keys already logged: once per key, however often events or reconciles
        # meet them (they are still counted every time).
        self._archived_logged: set[str] = set()
        # The group is looked up once per serve: a reload looks again.
        self.attributes = Attributes(
            # Unset: the defaults every write gets (0644, 0755), stated once in paths.
            DEFAULT_ATTRIBUTES.file_mode if config.file_mode is None else config.file_mode,
            DEFAULT_ATTRIBUTES.dir_mode if config.dir_mode is None else config.dir_mode,
            config.gid,
            repair=config.file_mode is not None
            or config.dir_mode is not None
            or bool(config.group),
        )
        self.limiter = TokenBucket(config.max_bandwidth) if config.max_bandwidth else None

    @property
    def s3(self) -> Any:
        """The S3 client this mirror reads with (a reconcile lists through it too)."""
        return self._s3

    @property
    def ledger(self) -> Ledger:
        """The ledger this mirror records in (a reconcile reads and resets it too)."""
        return self._ledger

    def covers(self, bucket: str, key: str) -> bool:
        """In this mirror's folder, and kept by its include/exclude filters."""
        return self.config.covers(bucket, key) and self.config.selects(key)

    def parts(self, key: str) -> tuple[str, ...]:
        return safe_parts(key, self.config.prefix, self.config.directory)

    async def apply(self, change: ObjectChange) -> Applied:
        """Bring the file for ``change.key`` to the object's current state in S3.

        A key that must not be written is refused (logged, outcome ``refused``): retrying
        cannot help. Any exception means the change was not applied and the message must
        come back.
        """
        started = time.monotonic()
        self._recreate_directory()
        try:
            applied = await self._apply(change)
        except UnsafeKey as refusal:
            self.report_refused(refusal)
            return Applied("refused")
        self.report_applied(change.key, applied, change.event_name, started)
        return applied

    def _recreate_directory(self) -> None:
        """The mirror's directory was deleted under us: make it again, so this change
        lands (the drift watcher reconciles the rest once it sees the directory back).

        Raises OSError when it cannot be made (a file in its place, a read-only or
        missing parent): the change is handed back and retried, not lost.
        """
        directory = self.config.directory
        if directory.is_dir():
            return
        directory.mkdir(parents=True, exist_ok=True)
        # For the drift watcher: what the directory held is gone. Said here because a
        # new directory may get the old one's inode, and then looks like the same one.
        self.directory_recreated = True
        log.warning(
            "%s: directory %s was gone: recreated it; the rest comes back with a reconcile",
            self.name,
            directory,
        )

    def report_applied(self, key: str, applied: Applied, how: str, started: float) -> None:
        """One log line per applied change, and the observer's counters."""
        if applied.outcome in ("archived", "restoring"):
            self._report_archived(key, applied, how)
            return
        self._archived_logged.discard(key)
        log.info(
            "%s: %s %s (%s, %d bytes, %.0f ms)",
            self.name,
            applied.outcome,
            key,
            how,
            applied.size,
            (time.monotonic() - started) * 1000,
            extra=journal_fields(mirror=self.name, key=key, outcome=applied.outcome),
        )
        if self._observer is not None:
            self._observer.applied(self.name, key, applied)
        if self._on_changed is not None and applied.outcome in CHANGED_OUTCOMES:
            self._on_changed(self.config.directory / key[len(self.config.prefix) :])

    def report_left_alone(self, relatives: list[str]) -> None:
        """Local files the filters exclude are kept as they are; say so once (again only
        when their number changes), not at every reconcile."""
        if len(relatives) == (self._left_alone_said or 0):
            return
        self._left_alone_said = len(relatives)
        if relatives:
            log.warning(
                "%s: leaving alone %d local file(s) that include/exclude leave out (neither"
                " deleted nor updated any more), e.g. %s",
                self.name,
                len(relatives),
                ", ".join(sorted(relatives)[:3]),
                extra=journal_fields(mirror=self.name),
            )

    def report_held_back(self, deletions: int, reason: str | None) -> None:
        """The mass-deletion guard kept ``deletions`` back (0: nothing held any more)."""
        if deletions:
            log.warning(
                "%s: holding back %d deletion(s), nothing deleted: %s. Downloads went"
                " ahead. If S3 is right, confirm with `s3pull sync --allow-mass-delete`"
                " (with the agent stopped: it holds the state directory)",
                self.name,
                deletions,
                reason,
                # Work left for an operator: shown with --quiet too, like the summary.
                extra={**journal_fields(mirror=self.name), **SUMMARY},
            )
        if self._observer is not None:
            self._observer.held_back(self.name, deletions, reason)

    def _report_archived(self, key: str, applied: Applied, how: str) -> None:
        if key not in self._archived_logged:
            self._archived_logged.add(key)
            what = (
                'skipped (archived = "skip"; restore it in S3 to mirror it)'
                if applied.outcome == "archived"
                else f"restore requested ({RESTORE_TIER}, {RESTORE_DAYS} days): fetched when"
                " ObjectRestore:Completed arrives"
            )
            log.warning(
                "%s: %s %s (%s): archived in S3 (GLACIER or DEEP_ARCHIVE, not restored), %s",
                self.name,
                applied.outcome,
                key,
                how,
                what,
                extra=journal_fields(mirror=self.name, key=key, outcome=applied.outcome),
            )
        if self._observer is not None:
            self._observer.applied(self.name, key, applied)

    async def archived(self, key: str) -> Outcome:
        """``key`` cannot be read until restored: skip it, or ask S3 to restore it.

        Never raises for the archive itself, so the message is acknowledged: retrying
        could not read it sooner, and a dead letter would say something is broken.
        """
        if self.config.archived == "skip":
            return "archived"
        try:
            await self._s3.restore_object(
                Bucket=self.config.bucket,
                Key=key,
                RestoreRequest={
                    "Days": RESTORE_DAYS,
                    "GlacierJobParameters": {"Tier": RESTORE_TIER},
                },
            )
        except ClientError as exc:
            # Another server of the fleet (or an earlier event) asked first: same result.
            if error_code(exc) != "RestoreAlreadyInProgress":
                raise
        return "restoring"

    def report_refused(self, refusal: UnsafeKey) -> None:
        """One log line per refused key, and the observer's counters."""
        log.warning(
            "%s: %s", self.name, refusal, extra=journal_fields(mirror=self.name, key=refusal.key)
        )
        if self._observer is not None:
            self._observer.refused(self.name, refusal)

    async def repair(self, path: Path) -> Applied | None:
        """A file below the directory changed on disk: put back what S3 holds.

        Returns None when there is nothing to repair: our own write (the file matches
        the ledger), a temporary file, a directory, or a name no key of ours could have.
        """
        try:
            relative = path.relative_to(self.config.directory).as_posix()
        except ValueError:
            return None
        if not self.config.directory.is_dir():
            return None  # the whole directory is gone: a reconcile brings it back
        key = self.config.prefix + relative
        if not self.config.selects(key):
            return None  # the filters leave it out: whatever happens to it is not ours
        started = time.monotonic()
        if _is_directory(path):
            return self._repair_directory(key)
        try:
            parts = self.parts(key)
            st = local_stat(self.config.directory, parts, key)
        except UnsafeKey:
            return None
        entry = self._ledger.get(self.name, key)
        if file_matches(entry, st):
            # The right bytes; a chmod or chgrp is put back without a download.
            return self.repair_attributes(key, parts, "local drift", started)
        if st is None and (entry is None or not entry.present):
            return None
        if await self.exists_in_s3(key):
            applied = await self.fetch(key, parts)
        elif st is not None and self.config.delete:
            self.remove_extra(key, parts)
            applied = Applied("deleted")
        else:
            return None
        self.report_applied(key, applied, "local drift", started)
        return applied

    def _repair_directory(self, key: str) -> Applied | None:
        """A directory below ours changed: put back its mode and group (a chmod), if it
        holds keys of ours; one of local files only is left alone."""
        started = time.monotonic()
        if not self.attributes.repair:
            return None
        if not any(e.present for e in self._ledger.entries(self.name, key + "/").values()):
            return None
        try:
            parts = self.parts(key)
            wrong = repair_directory_attributes(self.config.directory, parts, key, self.attributes)
        except UnsafeKey:
            return None
        if wrong is None:
            return None
        applied = Applied("attributes")
        self.report_applied(key + "/", applied, f"local drift: {wrong}", started)
        return applied

    def repair_attributes(
        self, key: str, parts: tuple[str, ...], how: str, started: float
    ) -> Applied | None:
        """Put back the mode and group of a file whose content is right (and of the
        directories on its way); report it. None when nothing was wrong."""
        wrong = repair_attributes(self.config.directory, parts, key, self.attributes)
        if wrong is None:
            return None
        applied = Applied("attributes")
        self.report_applied(key, applied, f"{how}: {wrong}", started)
        return applied

    async def _apply(self, change: ObjectChange) -> Applied:
        if is_folder_placeholder(change.key):
            return Applied("placeholder")
        parts = self.parts(change.key)
        if self._ledger.is_stale(self.name, change.key, change.sequencer):
            return Applied("stale")
        if change.kind == "removed" and await self.exists_in_s3(change.key) is False:
            # S3 confirms the removal: this event's sequencer becomes the bar.
            return Applied(self._gone(change.key, parts, change.sequencer))
        entry = self._ledger.get(self.name, change.key)
        return await self._fetch(change.key, parts, entry, change)

    async def exists_in_s3(self, key: str) -> bool:
        """HEAD the object: a remove event is only believed once S3 agrees (a 403 once
        a listing agrees too: see ``is_gone``)."""
        try:
            await self._s3.head_object(Bucket=self.config.bucket, Key=key)
        except ClientError as exc:
            if await is_gone(self._s3, self.config.bucket, key, exc):
                return False
            raise
        return True

    async def fetch(self, key: str, parts: tuple[str, ...], if_match: str | None = None) -> Applied:
        """Download ``key`` to ``parts`` whatever the ledger says (no conditional GET on
        an ETag we hold), settling a file/directory collision on the way. With
        ``if_match``, only that version will do. Raises ``UnsafeKey`` when it must not
        be written."""
        return await self._fetch(key, parts, None, if_match=if_match)

    async def _fetch(
        self,
        key: str,
        parts: tuple[str, ...],
        entry: Entry | None,
        event: ObjectChange | None = None,
        if_match: str | None = None,
    ) -> Applied:
        """Make the file what S3 holds now. ``event`` is the change that asked, if any:
        its sequencer is kept only when S3 served the very version it names. With
        ``if_match``, only that version will do (``download``)."""
        try:
            return await self._fetch_once(key, parts, entry, event, if_match)
        except PathCollision as collision:
            # A late event for a key S3 no longer holds: nothing to write, no collision.
            if not await self.exists_in_s3(key):
                return Applied(self._gone(key, parts, None))
            await self._settle_collision(collision)
        return await self._fetch_once(key, parts, entry, event, if_match)  # the way is clear

    async def _fetch_once(
        self,
        key: str,
        parts: tuple[str, ...],
        entry: Entry | None,
        event: ObjectChange | None,
        if_match: str | None = None,
    ) -> Applied:
        st = local_stat(self.config.directory, parts, key)
        current = entry.etag if entry is not None and file_matches(entry, st) else None
        try:
            result = await download(
                self._s3,
                self.config.bucket,
                key,
                self.config.directory,
                parts,
                if_none_match=current,
                if_match=if_match,
                attributes=self.attributes,
                limiter=self.limiter,
            )
        except ClientError as exc:
            if error_code(exc) != "InvalidObjectState":
                raise
            # A local copy, if any, is left as it is: S3 still holds the object.
            return Applied(await self.archived(key))
        if result == GONE:
            return Applied(self._gone(key, parts, None))
        if result == NOT_MODIFIED:
            assert entry is not None and entry.size is not None and entry.mtime_ns is not None
            # Still the version the bar was set for: it stands, unless this event names
            # that version too and brings a sequencer of its own.
            bar = _confirmed_sequencer(event, entry.etag) or entry.sequencer
            self._ledger.record_present(self.name, key, entry.etag, entry.size, entry.mtime_ns, bar)
            # Unchanged bytes, but a mode or group changed by hand is put back all the same.
            if repair_attributes(self.config.directory, parts, key, self.attributes):
                return Applied("attributes")
            return Applied("unchanged")
        assert isinstance(result, Downloaded)
        self._ledger.record_present(
            self.name,
            key,
            result.etag,
            result.size,
            result.mtime_ns,
            _confirmed_sequencer(event, result.etag),
        )
        return Applied("downloaded", result.size)

    async def _settle_collision(self, collision: PathCollision) -> None:
        """A file and a directory want the same name. Ask S3 which one is real.

        Returns when the local blocker was stale and is gone now (try again). Raises the
        collision itself when S3 really holds both keys (a final refusal), and
        ``CollisionPending`` when the blocker is stale but this mirror does not mirror
        deletions, or its delete event is still on the way: the message comes back later.
        """
        root = self.config.directory
        blocker = self.config.prefix + "/".join(collision.blocker)
        if collision.blocker_is_directory:
            listing = await self._s3.list_objects_v2(
                Bucket=self.config.bucket, Prefix=blocker + "/", MaxKeys=1
            )
            if listing.get("Contents"):
                raise collision
            stale = [
                (f"{blocker}/{shown_name(relative)}", (*collision.blocker, *relative.split("/")))
                for relative, _st in walk_files(root.joinpath(*collision.blocker))
            ]
        else:
            if await self.exists_in_s3(blocker):
                raise collision
            stale = [(blocker, collision.blocker)]
        if not self.config.delete:
            raise CollisionPending(
                f"{collision.key}: {collision.reason}, and {blocker} is no"
                " longer in S3 but this mirror keeps deleted files"
            )
        if any(not self.config.selects(key) for key, _parts in stale):
            # include/exclude promise to leave such files alone: refuse, never delete.
            raise collision
        for key, parts in stale:
            if self.remove_extra(key, parts):
                log.info(
                    "%s: deleted %s (no longer in S3, in the way of %s)",
                    self.name,
                    key,
                    collision.key,
                )

    def remove_extra(self, key: str, parts: tuple[str, ...]) -> bool:
        """Delete a local file S3 does not hold (never through a symlink: UnsafeKey).

        A name that is not UTF-8 can be no key, so the ledger never hears of it (SQLite
        could not even store it); ``key`` is then only its escaped ``shown_name``.
        """
        if not remove_file(self.config.directory, parts, key):
            return False
        if all(is_utf8(part) for part in parts):
            self._ledger.record_absent(self.name, key)
        return True

    def _gone(self, key: str, parts: tuple[str, ...], sequencer: str | None) -> Outcome:
        self._ledger.record_absent(self.name, key, sequencer)
        if not self.config.delete:
            return "kept"
        return "deleted" if remove_file(self.config.directory, parts, key) else "absent"

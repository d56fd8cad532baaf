"""Full reconcile of one mirror: list the prefix, plan against the directory, execute.

``list_remote`` -> ``plan`` (what to fetch, what to delete, what is refused) ->
``execute`` (parallel downloads, then deletions). Every file is written and every
outcome reported through the mirror's own methods (``Mirror.fetch``,
``Mirror.remove_extra``, ``Mirror.report_applied``), so a reconcile and an event write
the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Final

from s3pull.aws import TRANSIENT_ERRORS
from s3pull.download import mtime_ns
from s3pull.errors import UnsafeKey
from s3pull.guard import held_back_reason
from s3pull.mirror import ARCHIVED_STORAGE_CLASSES, Applied, Mirror, file_matches
from s3pull.paths import (
    is_folder_placeholder,
    local_stat,
    repair_directory_attributes,
    shown_name,
)
from s3pull.walk import walk_files

__all__ = [
    "PLAN_STEP",
    "Executed",
    "ReconcilePlan",
    "RemoteObject",
    "execute",
    "list_remote",
    "plan",
]

log = logging.getLogger(__name__)

# A plan costs about 44 us per object (a local stat through directory descriptors): it
# hands the event loop back this often, so a listing of any size never starves the
# watchdog ping or the queue (a few ms at a time).
PLAN_STEP: Final = 64


@dataclass(frozen=True, slots=True)
class RemoteObject:
    key: str
    etag: str | None
    size: int
    mtime_ns: int
    # Download only this version (ETag), or fail: a trigger manifest's promise.
    if_match: str | None = None
    storage_class: str | None = None  # as the listing says (None: STANDARD)


@dataclass(frozen=True, slots=True)
class Executed:
    failures: list[BaseException]
    refused: int  # refused only when acted on: collisions, files swapped for symlinks
    downloaded: int = 0
    deleted: int = 0
    held_back: int = 0  # deletions the mass-deletion guard kept back
    archived: int = 0  # downloads S3 refused as archived (skipped, or their restore asked)


@dataclass(slots=True)
class ReconcilePlan:
    downloads: list[tuple[RemoteObject, tuple[str, ...]]] = field(default_factory=list)
    # (key, path parts) of local files S3 does not hold. A name that is not UTF-8 can be
    # no key: its "key" is shown escaped (``shown_name``), its parts are the real name.
    deletions: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    refused: list[UnsafeKey] = field(default_factory=list)
    adopted: list[RemoteObject] = field(default_factory=list)  # up to date, not in the ledger
    # Archived and archived = "skip": never fetched (a GET would fail), never deleted.
    archived: list[RemoteObject] = field(default_factory=list)
    # (key, path parts) of files with the right bytes but a wrong mode or group.
    attributes: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    # Directories (path parts) that hold listed keys: theirs are the modes and group a
    # reconcile checks; a directory of local files only is none of its business.
    directories: set[tuple[str, ...]] = field(default_factory=set)
    up_to_date: int = 0
    under: str = ""  # the prefix the listing covered
    excluded: int = 0  # listed objects the mirror's include/exclude filters leave out
    # Local files the filters leave out: never deleted, never updated (a filter added
    # later must not cost the files it now excludes).
    left_alone: list[str] = field(default_factory=list)
    files: int = 0  # local files the filters select (what max_delete's percentage is of)
    listed: int = 0  # listed objects the filters select, folder placeholders aside
    # Why the deletions wait for an operator (max_delete, an empty listing), or None.
    held_back: str | None = None

    @property
    def download_bytes(self) -> int:
        return sum(remote.size for remote, _parts in self.downloads)


def _listed_matches(obj: RemoteObject, st: os.stat_result) -> bool:
    """Does a file we hold no record of look like our download of the listed object?"""
    return st.st_size == obj.size and st.st_mtime_ns == obj.mtime_ns


async def list_remote(mirror: Mirror, under: str | None = None) -> list[RemoteObject]:
    """Every object under the mirror's prefix (or the narrower prefix ``under``)."""
    paginator = mirror.s3.get_paginator("list_objects_v2")
    objects: list[RemoteObject] = []
    prefix = mirror.config.prefix if under is None else under
    async for page in paginator.paginate(Bucket=mirror.config.bucket, Prefix=prefix):
        for item in page.get("Contents", ()):
            etag = str(item.get("ETag", "")).strip('"') or None
            objects.append(
                RemoteObject(
                    item["Key"],
                    etag,
                    int(item["Size"]),
                    mtime_ns(item["LastModified"]),
                    storage_class=item.get("StorageClass"),
                )
            )
    return objects


async def plan(
    mirror: Mirror,
    remote: list[RemoteObject] | None = None,
    under: str | None = None,
    allow_mass_delete: bool = False,
) -> ReconcilePlan:
    """Compare a listing (of everything, or of ``under``) with the directory: what
    to fetch, what to delete, and whether the deletions must wait for an operator
    (``allow_mass_delete`` is that operator's word)."""
    if remote is None:
        remote = await list_remote(mirror, under)
    directory = mirror.config.directory
    entries = mirror.ledger.entries(mirror.name, under or mirror.config.prefix)
    planned = ReconcilePlan(under=under or mirror.config.prefix)
    wanted: set[str] = set()
    for counted, obj in enumerate(remote, start=1):
        if counted % PLAN_STEP == 0:
            await asyncio.sleep(0)
        if is_folder_placeholder(obj.key):
            continue
        if not mirror.config.selects(obj.key):
            planned.excluded += 1
            continue
        planned.listed += 1
        try:
            parts = mirror.parts(obj.key)
            st = local_stat(directory, parts, obj.key)
        except UnsafeKey as refusal:
            planned.refused.append(refusal)
            continue
        wanted.add("/".join(parts))
        if len(parts) > 1:
            planned.directories.add(parts[:-1])
        entry = entries.get(obj.key)
        if file_matches(entry, st) and entry is not None and entry.etag == obj.etag:
            planned.up_to_date += 1
        elif entry is None and st is not None and _listed_matches(obj, st):
            # No ledger entry (a fresh ledger after a corrupt one was moved aside) but
            # the size and whole-second mtime our downloads give: adopt, not download.
            planned.adopted.append(obj)
            planned.up_to_date += 1
        elif obj.storage_class in ARCHIVED_STORAGE_CLASSES and mirror.config.archived == "skip":
            # The listing tells, so no GET that must fail. (With "restore" it is fetched:
            # a restored copy downloads, an unrestored one has its restore requested.)
            planned.archived.append(obj)
        else:
            planned.downloads.append((obj, parts))
            continue
        if st is not None and mirror.attributes.differ(st):
            planned.attributes.append((obj.key, parts))
    if mirror.config.delete:
        for counted, (relative, _st) in enumerate(walk_files(directory), start=1):
            if counted % PLAN_STEP == 0:
                await asyncio.sleep(0)
            if not mirror.config.selects(mirror.config.prefix + relative):
                planned.left_alone.append(shown_name(relative))
                continue
            planned.files += 1
            if relative not in wanted:
                planned.deletions.append(
                    (mirror.config.prefix + shown_name(relative), tuple(relative.split("/")))
                )
        reason = held_back_reason(
            mirror.config.max_delete, len(planned.deletions), planned.files, planned.listed
        )
        if reason is not None and not allow_mass_delete:
            planned.held_back = reason
    return planned


async def _repair_attributes(
    mirror: Mirror,
    plan: ReconcilePlan,
    held: Callable[[str], AbstractAsyncContextManager[None]],
) -> None:
    """Put back modes and groups changed by hand, without a download: of the
    directories holding listed keys (and those above them), then of the files."""
    if not mirror.attributes.repair:
        return  # nothing set by the operator: modes found are theirs
    root = mirror.config.directory
    for counted, parts in enumerate(sorted(plan.directories), start=1):
        if counted % PLAN_STEP == 0:
            await asyncio.sleep(0)
        where = "/".join(parts) + "/"
        try:
            wrong = repair_directory_attributes(root, parts, where, mirror.attributes)
        except (UnsafeKey, OSError) as exc:  # swapped or gone since the plan
            log.error("%s: could not set the mode or group of %s: %s", mirror.name, where, exc)
            continue
        if wrong is not None:
            log.info("%s: put back the mode and group of directories: %s", mirror.name, wrong)
    for counted, (key, parts) in enumerate(plan.attributes, start=1):
        if counted % PLAN_STEP == 0:
            await asyncio.sleep(0)
        try:
            async with held(key):
                mirror.repair_attributes(key, parts, "reconcile", time.monotonic())
        except (UnsafeKey, OSError) as exc:  # swapped or unreadable since the plan
            log.error("%s: could not set the mode or group of %s: %s", mirror.name, key, exc)


async def execute(
    mirror: Mirror,
    plan: ReconcilePlan,
    concurrency: int,
    on_progress: Callable[[int], None] | None = None,
    hold: Callable[[str], AbstractAsyncContextManager[None]] | None = None,
    label: str = "reconcile",
) -> Executed:
    """Carry out a plan with ``concurrency`` parallel transfers. ``label`` says in each
    log line what the download was for (a trigger's batch is no reconcile).

    ``hold`` is for a reconcile that runs while events are applied (the drift watcher's):
    each download and deletion then takes the key's lock, and a file to delete is first
    looked up in S3, since an event may have brought it after the listing.
    """

    def held(key: str) -> AbstractAsyncContextManager[None]:
        return hold(key) if hold is not None else contextlib.nullcontext()

    failures: list[BaseException] = []
    refused = downloaded = deleted = archived = 0
    mirror.config.directory.mkdir(parents=True, exist_ok=True)
    for counted, obj in enumerate(plan.adopted, start=1):
        if counted % PLAN_STEP == 0:
            await asyncio.sleep(0)  # a rebuilt ledger adopts every file: keep the loop going
        mirror.ledger.record_present(mirror.name, obj.key, obj.etag, obj.size, obj.mtime_ns)
    work: asyncio.Queue[tuple[RemoteObject, tuple[str, ...]]] = asyncio.Queue()
    for item in plan.downloads:
        work.put_nowait(item)

    async def worker() -> None:
        nonlocal refused, downloaded, archived
        while not work.empty():
            obj, parts = work.get_nowait()
            started = time.monotonic()
            try:
                async with held(obj.key):
                    applied = await mirror.fetch(obj.key, parts, if_match=obj.if_match)
            except UnsafeKey as refusal:  # found only at write time (a collision)
                refused += 1
                mirror.report_refused(refusal)
            except Exception as exc:
                mirror.repeats.error(
                    mirror.name,
                    obj.key,
                    exc,
                    "%s: could not download %s: %s",
                    mirror.name,
                    obj.key,
                    exc,
                    logger=log,
                )
                failures.append(exc)
            else:
                # An archived object (archived = "restore") had its restore asked: not
                # downloaded yet.
                not_yet = applied.outcome in ("archived", "restoring")
                downloaded += not not_yet
                archived += not_yet
                mirror.report_applied(obj.key, applied, label, started)
            if on_progress is not None:
                on_progress(obj.size)

    await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, work.qsize())))))
    await _repair_attributes(mirror, plan, held)
    # The listing is S3's word on every key it covered: no sequencer an event left
    # behind may make a later event stale any more.
    mirror.ledger.reset_sequencers(mirror.name, plan.under)
    for refusal in plan.refused:
        mirror.report_refused(refusal)
    for obj in plan.archived:
        mirror.report_applied(obj.key, Applied("archived"), "reconcile", time.monotonic())
    if mirror.config.delete and plan.under == mirror.config.prefix:  # a mirror's own plan
        mirror.report_left_alone(plan.left_alone)
        mirror.report_held_back(len(plan.deletions) if plan.held_back else 0, plan.held_back)
    if plan.held_back:
        return Executed(
            failures, refused, downloaded, 0, held_back=len(plan.deletions), archived=archived
        )
    for counted, (key, parts) in enumerate(plan.deletions, start=1):
        if counted % PLAN_STEP == 0:
            await asyncio.sleep(0)
        started = time.monotonic()
        try:
            async with held(key):
                if hold is not None and await mirror.exists_in_s3(key):
                    continue  # uploaded since the listing, and its event applied it
                removed = mirror.remove_extra(key, parts)
        except UnsafeKey as refusal:  # swapped for a symlink since the plan: left alone
            refused += 1
            mirror.report_refused(refusal)
            continue
        except TRANSIENT_ERRORS as exc:  # OSError among them
            mirror.repeats.error(
                mirror.name,
                key,
                exc,
                "%s: could not delete %s: %s",
                mirror.name,
                key,
                exc,
                logger=log,
            )
            failures.append(exc)
            continue
        if removed:
            deleted += 1
            mirror.report_applied(key, Applied("deleted"), "reconcile: not in S3", started)
    # The reconcile is over: say how many more failed like the ones logged.
    mirror.repeats.flush(mirror.name)
    return Executed(failures, refused, downloaded, deleted, archived=archived)

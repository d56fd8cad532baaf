"""A large object as parallel ranged GETs into one temporary file, verified as it lands.

``download()`` sends its plain GET as always, so small objects pay nothing: no HEAD, no
extra request. When that response announces at least ``Tuning.threshold`` bytes,
``fetch()`` takes over. The first part is read from the response already open (which is
then closed); the others are ranged GETs with ``If-Match`` on that response's ETag, so
an overwrite in the middle answers 412 instead of handing over bytes of another version.
The ETag of every part is compared too (s3rver ignores ``If-Match``). Each part is
written at its offset into the ``AtomicWriter``'s temporary file; a thread hashes the
contiguous prefix in order, reading it back from the file while later parts still
arrive (hashlib and zlib release the GIL), so the check (the MD5 an ETag stands for, or
the checksum S3 stored: ``download.Verifier``) ends soon after the last byte.

Memory stays bounded: each stream holds at most one ``CHUNK_SIZE`` read and aiohttp's
buffer for it (twice that), whatever the object's size; all streams share the client's
connection pool and the mirror's bandwidth limiter. A part cut off mid-body is resumed
where it broke, ``RANGE_ATTEMPTS`` times; what still fails goes up to ``download()``,
which retries the whole object as it does any body.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from botocore.exceptions import ClientError

from s3pull.aws import error_code, is_missing
from s3pull.bandwidth import TokenBucket
from s3pull.download import (
    RETRIED_BODY_ERRORS,
    Downloaded,
    IntegrityError,
    Verifier,
    VersionChanged,
    mtime_ns,
)
from s3pull.paths import AtomicWriter, Attributes

__all__ = [
    "DEFAULT_TUNING",
    "ONE_STREAM",
    "PART_SIZE",
    "RANGE_ATTEMPTS",
    "STREAMS",
    "THRESHOLD",
    "ObjectChanged",
    "RangesIgnored",
    "Tuning",
    "fetch",
    "wanted",
]

log = logging.getLogger(__name__)

# Chosen by measurement on s3rver and moto (bench/README.md, "Large objects: ranged GETs").
# Large parts: moto reads the whole object for every ranged GET, so 16 MiB parts made a
# 1 GiB object 9x slower there, 64 MiB parts 2.4x, 128 MiB 1.5-1.8x, while s3rver could not
# tell 32, 64 and 128 MiB apart. The threshold is two parts: a ranged GET for less earns
# nothing.
PART_SIZE: Final = 128 << 20
THRESHOLD: Final = 2 * PART_SIZE
STREAMS: Final = 4  # parallel GETs per object, the first response included
RANGE_ATTEMPTS: Final = 3  # per part; a resumed part asks only for what is missing
CHUNK_SIZE: Final = 1 << 20  # one read from a stream
HASH_BLOCK: Final = 1 << 20  # one read back from the file by the hashing thread


@dataclass(frozen=True, slots=True)
class Tuning:
    """When an object is fetched in ranges, and how."""

    threshold: int = THRESHOLD  # ContentLength from which the rest comes as ranges
    part_size: int = PART_SIZE
    streams: int = STREAMS


DEFAULT_TUNING: Final = Tuning()
ONE_STREAM: Final = Tuning(threshold=1 << 62)  # never ranged


class RangesIgnored(IntegrityError):
    """The server answered a ranged GET with the whole object (some S3-compatible stores
    and proxies do): ``download()`` fetches this object in one stream instead."""


class ObjectChanged(IntegrityError):
    """The object was overwritten or deleted between the first GET and a later range.

    An ``IntegrityError``, so ``download()`` starts over (a fresh GET sees the new version
    or the deletion) exactly as it does for a body cut short.
    """


def wanted(response: dict[str, Any], tuning: Tuning | None = None) -> bool:
    """Is the object of this (full, unranged) GET response large enough for ranges?"""
    return int(response["ContentLength"]) >= (tuning or DEFAULT_TUNING).threshold


async def fetch(
    s3: Any,
    request: dict[str, Any],
    response: dict[str, Any],
    key: str,
    root: Path,
    parts: tuple[str, ...],
    attributes: Attributes,
    limiter: TokenBucket | None,
    tuning: Tuning | None = None,
) -> Downloaded:
    """Make ``root/parts`` equal to the object ``response`` (a full GET) began to send.

    ``request`` is that GET's: the caller's ``IfMatch``, when it has one, turns an
    overwrite into ``VersionChanged``; without one an overwrite raises ``ObjectChanged``
    (the caller starts over). Raises ``IntegrityError`` on a short or corrupt object and
    the body errors of ``download()`` once a part's retries are spent.
    """
    tuning = tuning or DEFAULT_TUNING
    size = int(response["ContentLength"])
    etag = str(response.get("ETag", ""))
    verifier = Verifier(response)
    modified = mtime_ns(response["LastModified"])
    # Closed here whatever happens (twice is harmless): a refused path or a full disk
    # must not leave the first response's connection open.
    with contextlib.closing(response["Body"]), AtomicWriter(root, parts, key, attributes) as writer:
        # In a thread: where the file system has no fallocate, glibc emulates it by
        # writing every block, which must not stall the event loop.
        await asyncio.to_thread(writer.preallocate, size)
        job = _Job(s3, request, etag, key, size, writer, limiter, tuning)
        hasher = _Hasher(writer.duplicate(), size, verifier) if verifier.checks else None
        job.hasher = hasher
        try:
            streams = [asyncio.create_task(job.stream(response))]
            streams += [
                asyncio.create_task(job.stream(None))
                for _ in range(min(tuning.streams, job.count) - 1)
            ]
            try:
                await asyncio.gather(*streams)
            finally:
                # The first failure ends the others before the writer (and its file) goes.
                for task in streams:
                    task.cancel()
                await asyncio.gather(*streams, return_exceptions=True)
            if writer.bytes_written != size:
                raise IntegrityError(
                    f"{key}: received {writer.bytes_written} bytes, expected {size}"
                )
            if hasher is not None and (problem := await hasher.result) is not None:
                raise IntegrityError(f"{key}: {problem}")
        finally:
            if hasher is not None:
                hasher.stop()
        # As download() does: fsync and rename off the event loop, shielded from a
        # cancellation so the rename is never left half-done.
        writer.claim()
        await asyncio.shield(asyncio.to_thread(writer.commit, modified))
        return Downloaded(etag.strip('"') or None, size, modified)


class _Job:
    """The parts of one object and the streams that fetch them, in order."""

    def __init__(
        self,
        s3: Any,
        request: dict[str, Any],
        etag: str,
        key: str,
        size: int,
        writer: AtomicWriter,
        limiter: TokenBucket | None,
        tuning: Tuning,
    ) -> None:
        self._s3 = s3
        self._key = key
        self._etag = etag
        # The caller's If-Match, if any, names the same ETag the first response carries;
        # If-None-Match is left out: the first response already settled it.
        self._promised = bool(request.get("IfMatch"))
        self._request = {"Bucket": request["Bucket"], "Key": request["Key"], "IfMatch": etag}
        self._size = size
        self._writer = writer
        self._limiter = limiter
        self._part = tuning.part_size
        self.count = max(1, -(-size // tuning.part_size))
        self._next = 0  # the next part no stream has taken
        self._filled = [0] * self.count  # bytes on disk of each part, from its start
        self._frontier = 0  # the first part not yet complete
        self.hasher: _Hasher | None = None

    async def stream(self, first: dict[str, Any] | None) -> None:
        """Fetch parts in order until none are left; begin with part 0 from ``first``."""
        if first is not None:
            index = self._take()
            try:
                await self._copy(first["Body"], index)
            except RETRIED_BODY_ERRORS as exc:
                # Cut short: the rest of part 0 comes as a range, like any other part.
                log.warning("%s: resuming part 0 after: %s", self._key, exc)
                await self._fetch(index, first_attempt=2)
        while self._next < self.count:
            await self._fetch(self._take())

    def _take(self) -> int:
        index = self._next
        self._next += 1
        return index

    def _bounds(self, index: int) -> tuple[int, int]:
        start = index * self._part
        return start, min(start + self._part, self._size)

    async def _fetch(self, index: int, first_attempt: int = 1) -> None:
        start, end = self._bounds(index)
        for attempt in range(first_attempt, RANGE_ATTEMPTS + 1):
            offset = start + self._filled[index]
            try:
                response = await self._s3.get_object(
                    **self._request, Range=f"bytes={offset}-{end - 1}"
                )
            except ClientError as exc:
                if error_code(exc) in ("412", "PreconditionFailed") or is_missing(exc):
                    raise self._changed() from None
                raise
            self._check(response, offset, end)
            try:
                await self._copy(response["Body"], index)
                return
            except RETRIED_BODY_ERRORS as exc:
                if attempt == RANGE_ATTEMPTS:
                    raise
                log.warning(
                    "%s: resuming bytes %d-%d after attempt %d failed: %s",
                    self._key,
                    start + self._filled[index],
                    end - 1,
                    attempt,
                    exc,
                )

    def _check(self, response: dict[str, Any], offset: int, end: int) -> None:
        wanted = f"bytes {offset}-{end - 1}/{self._size}"
        if response.get("ContentRange") is None:
            response["Body"].close()
            raise RangesIgnored(
                f"{self._key}: the server ignored Range (answered the whole object)"
            )
        if str(response.get("ETag", "")) != self._etag:
            response["Body"].close()
            raise self._changed()  # a server that ignored If-Match: never mix versions
        if response.get("ContentRange") != wanted:
            response["Body"].close()
            raise IntegrityError(
                f"{self._key}: asked for {wanted}, got {response.get('ContentRange')!r}"
            )

    def _changed(self) -> IntegrityError | VersionChanged:
        what = f"{self._key}: S3 no longer holds the version with ETag {self._etag.strip(chr(34))}"
        if self._promised:
            return VersionChanged(f"{what} (overwritten or deleted since it was listed)")
        return ObjectChanged(f"{what} (overwritten or deleted while it was downloaded)")

    async def _copy(self, body: Any, index: int) -> None:
        """Read part ``index`` from ``body`` (from where it stands) to its end, then close
        the body: the first response carries the whole object, and only part 0 is read."""
        start, end = self._bounds(index)
        try:
            offset = start + self._filled[index]
            while offset < end:
                chunk = await body.read(min(CHUNK_SIZE, end - offset))
                if not chunk:
                    raise IntegrityError(
                        f"{self._key}: bytes {offset}-{end - 1} missing (the body ended early)"
                    )
                if self._limiter is not None:
                    await self._limiter.take(len(chunk))
                self._writer.write_at(chunk, offset)
                offset += len(chunk)
                self._landed(index, offset - start)
        finally:
            body.close()

    def _landed(self, index: int, filled: int) -> None:
        """Record part ``index`` filled to ``filled`` bytes; feed the hasher what became
        contiguous from the start of the object."""
        self._filled[index] = filled
        if index != self._frontier:
            return
        while self._frontier < self.count:
            start, end = self._bounds(self._frontier)
            if self._filled[self._frontier] < end - start:
                break
            self._frontier += 1
        if self.hasher is not None:
            if self._frontier == self.count:
                self.hasher.advance(self._size)
            else:
                start, _ = self._bounds(self._frontier)
                self.hasher.advance(start + self._filled[self._frontier])


class _Hasher:
    """The check of a file being written out of order (its MD5, or the checksum S3
    stored: ``Verifier``), fed in order in a thread of its own as its prefix becomes
    contiguous (``advance``). One thread per object, not one
    of the default executor's: it waits most of its life, and a sync of many large
    objects must not starve the commits and SQLite calls that share that pool."""

    def __init__(self, fd: int, size: int, verifier: Verifier) -> None:
        self._fd = fd  # ours: a duplicate, closed when the thread ends
        self._size = size
        self._verifier = verifier  # fed by this thread only
        self._ready = 0
        self._stopped = False
        self._lock = threading.Condition()
        self._loop = asyncio.get_running_loop()
        # What does not match (``Verifier.problem``), or None.
        self.result: asyncio.Future[str | None] = self._loop.create_future()
        threading.Thread(target=self._run, name="s3pull-md5", daemon=True).start()

    def advance(self, ready: int) -> None:
        """Bytes ``0..ready`` of the file are written."""
        with self._lock:
            self._ready = ready
            self._lock.notify()

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            self._lock.notify()

    def _run(self) -> None:
        try:
            outcome: str | BaseException | None = self._hash()
        except BaseException as exc:  # handed to the event loop, never lost in the thread
            outcome = exc
        finally:
            os.close(self._fd)
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is waiting
            self._loop.call_soon_threadsafe(self._settle, outcome)

    def _hash(self) -> str | None:
        buffer = memoryview(bytearray(HASH_BLOCK))
        done = 0
        while done < self._size:
            with self._lock:
                while self._ready <= done and not self._stopped:
                    self._lock.wait()
                if self._stopped:
                    return None  # nobody waits for the answer
                ready = self._ready
            while done < ready and not self._stopped:
                read = os.preadv(self._fd, [buffer[: min(HASH_BLOCK, ready - done)]], done)
                if read == 0:
                    raise IntegrityError(f"the file ended at {done} bytes of {ready} written")
                self._verifier.update(buffer[:read])
                done += read
        return self._verifier.problem()

    def _settle(self, outcome: str | BaseException | None) -> None:
        if self.result.done():
            return
        if isinstance(outcome, BaseException):
            self.result.set_exception(outcome)
        else:
            self.result.set_result(outcome)

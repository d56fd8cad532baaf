"""Fetch one S3 object into a local file, atomically and verified.

Shared by mirrors and triggers. The caller decides where (``root`` + safe ``parts``);
this module decides how: conditional GET, stream to a temporary file next to the target,
check size and MD5 (when the ETag is one), fsync, set mtime, rename.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import aiohttp
from botocore.exceptions import ClientError, IncompleteReadError, ResponseStreamingError

from s3pull.aws import error_code, is_gone
from s3pull.bandwidth import TokenBucket
from s3pull.errors import S3PullError
from s3pull.paths import DEFAULT_ATTRIBUTES, AtomicWriter, Attributes

if TYPE_CHECKING:
    from s3pull.ranged import Tuning

__all__ = [
    "GONE",
    "NOT_MODIFIED",
    "Downloaded",
    "IntegrityError",
    "Verifier",
    "VersionChanged",
    "download",
    "mtime_ns",
]

log = logging.getLogger(__name__)

CHUNK_SIZE: Final = 1 << 20
# botocore retries 5xx and resets before the body, but not a body cut off mid-stream
# (aiohttp.ClientPayloadError): those whole downloads are retried here.
BODY_ATTEMPTS: Final = 3


class IntegrityError(S3PullError):
    """The bytes received do not match what S3 said it sent."""


class VersionChanged(S3PullError):
    """S3 no longer holds the version the caller asked for (``if_match``)."""


# A body cut off mid-stream surfaces as any of these, depending on where it broke:
# aiohttp's own error, botocore's wrappers for a dropped connection or a short body, a
# read timeout, or our own size/MD5 check.
RETRIED_BODY_ERRORS: Final = (
    aiohttp.ClientPayloadError,
    ResponseStreamingError,
    IncompleteReadError,
    IntegrityError,
    TimeoutError,
)

NOT_MODIFIED: Final = "not-modified"
GONE: Final = "gone"


@dataclass(frozen=True, slots=True)
class Downloaded:
    etag: str | None
    size: int
    mtime_ns: int


def mtime_ns(last_modified: datetime) -> int:
    """S3 LastModified as a whole-second mtime.

    GET returns an HTTP date (whole seconds) while listings carry milliseconds, so both
    sides are compared at one-second resolution.
    """
    return int(last_modified.timestamp()) * 1_000_000_000


def _md5_expected(response: dict[str, Any]) -> str | None:
    """The MD5 an ETag stands for, when it stands for one.

    Multipart ETags carry a ``-N`` suffix and SSE-KMS/SSE-C ETags are not MD5s of the
    content (S3 API reference, "Common Response Headers": ETag).
    """
    etag = str(response.get("ETag", "")).strip('"')
    encryption = response.get("ServerSideEncryption")
    if len(etag) != 32 or "-" in etag or encryption not in (None, "AES256"):
        return None
    if response.get("SSECustomerAlgorithm"):
        return None
    return etag.lower()


class _Crc32:
    """zlib's CRC32 with hashlib's face: S3 sends it as four big-endian bytes."""

    def __init__(self) -> None:
        self._value = 0

    def update(self, data: bytes) -> None:
        self._value = zlib.crc32(data, self._value)

    def digest(self) -> bytes:
        return self._value.to_bytes(4, "big")


def _sha256() -> Any:
    return hashlib.sha256()


def _sha1() -> Any:
    return hashlib.sha1(usedforsecurity=False)


# A whole-object checksum S3 stored at upload (x-amz-checksum-*, sent with checksum mode
# on), for the algorithms the standard library has. CRC32C and CRC64NVME need awscrt,
# which botocore also needs to check them.
CHECKSUMS: Final[dict[str, Callable[[], Any]]] = {
    "ChecksumCRC32": _Crc32,
    "ChecksumSHA256": _sha256,
    "ChecksumSHA1": _sha1,
}


class Verifier:
    """What the body must hash to: the MD5 an ETag stands for or, where there is none
    (SSE-KMS, multipart), a whole-object checksum S3 sent. Fed in order, by the one-stream
    path here and by the ranged path's hashing thread (``s3pull.ranged``)."""

    def __init__(self, response: dict[str, Any]) -> None:
        self._what = ""
        self._against = ""
        self._expected: str | None = None
        self._digest: Any = None
        md5 = _md5_expected(response)
        if md5 is not None:
            self._what, self._against, self._expected = "MD5", "ETag", md5
            self._digest = hashlib.md5(usedforsecurity=False)
            return
        for name, make in CHECKSUMS.items():
            value = str(response.get(name) or "")
            # "...-N": a checksum of the parts' checksums, not of the bytes.
            if value and "-" not in value:
                self._what, self._against = name, "the checksum S3 stored"
                self._expected, self._digest = value, make()
                return

    @property
    def checks(self) -> bool:
        """Is there anything to check beyond the size?"""
        return self._digest is not None

    def update(self, chunk: bytes | memoryview) -> None:
        if self._digest is not None:
            self._digest.update(chunk)

    def problem(self) -> str | None:
        """What does not match, when the bytes fed are not what S3 said; None when they
        are (or when there is nothing to check)."""
        if self._digest is None:
            return None
        if self._what == "MD5":
            computed = self._digest.hexdigest()
        else:
            computed = base64.b64encode(self._digest.digest()).decode()
        if computed == self._expected:
            return None
        return f"{self._what} {computed} does not match {self._against}"


async def download(
    s3: Any,
    bucket: str,
    key: str,
    root: Path,
    parts: tuple[str, ...],
    if_none_match: str | None = None,
    if_match: str | None = None,
    attributes: Attributes = DEFAULT_ATTRIBUTES,
    limiter: TokenBucket | None = None,
    tuning: Tuning | None = None,
) -> Downloaded | str:
    """Make ``root/parts`` equal to ``s3://bucket/key``.

    Returns a ``Downloaded``, ``NOT_MODIFIED`` when the object still has the ETag
    ``if_none_match``, or ``GONE`` when the object does not exist. With ``if_match``
    only that version will do: S3 checks it in the same request, so an overwrite since
    the caller listed the object cannot slip in, and ``VersionChanged`` is raised when
    the object changed or is gone. Raises ``UnsafeKey`` when a symlink or directory
    stands in the way, ``IntegrityError`` on a short or corrupt body,
    ``ClientError``/``OSError`` otherwise. The file gets ``attributes`` (mode, group)
    before it appears; ``limiter`` paces the body's bytes. An object of at least
    ``tuning.threshold`` bytes comes as parallel ranged GETs (``s3pull.ranged``).
    """
    request: dict[str, Any] = {"Bucket": bucket, "Key": key}
    if if_none_match:
        request["IfNoneMatch"] = f'"{if_none_match}"'
    if if_match:
        # S3 weighs If-Match first: a mismatch is 412 whatever If-None-Match says.
        request["IfMatch"] = f'"{if_match}"'
    for attempt in range(1, BODY_ATTEMPTS + 1):
        try:
            response = await s3.get_object(**request)
        except ClientError as exc:
            if error_code(exc) in ("304", "NotModified"):
                return NOT_MODIFIED
            if if_match and error_code(exc) in ("412", "PreconditionFailed"):
                raise VersionChanged(
                    f"{key}: S3 no longer holds the version with ETag {if_match}"
                    " (overwritten since it was listed)"
                ) from None
            if await is_gone(s3, bucket, key, exc):
                if if_match:
                    raise VersionChanged(
                        f"{key}: S3 no longer holds the version with ETag {if_match}"
                        " (deleted since it was listed)"
                    ) from None
                return GONE
            raise
        try:
            # Imported here: s3pull.ranged builds on this module.
            from s3pull import ranged

            if ranged.wanted(response, tuning):
                return await ranged.fetch(
                    s3, request, response, key, root, parts, attributes, limiter, tuning
                )
            return await _write_body(response, key, root, parts, attributes, limiter)
        except RETRIED_BODY_ERRORS as exc:
            if isinstance(exc, ranged.RangesIgnored):
                tuning = ranged.ONE_STREAM  # the next attempt reads the whole body
            if attempt == BODY_ATTEMPTS:
                raise
            log.warning("retrying download of %s after attempt %d failed: %s", key, attempt, exc)
    raise AssertionError("unreachable")


async def _write_body(
    response: dict[str, Any],
    key: str,
    root: Path,
    parts: tuple[str, ...],
    attributes: Attributes,
    limiter: TokenBucket | None,
) -> Downloaded:
    async with response["Body"] as body:
        expected_size = int(response["ContentLength"])
        verifier = Verifier(response)
        modified = mtime_ns(response["LastModified"])
        with AtomicWriter(root, parts, key, attributes) as writer:
            async for chunk in body.iter_chunks(CHUNK_SIZE):
                if limiter is not None:
                    # Paced as it is read: the socket's buffers fill meanwhile and TCP
                    # slows the sender down, so the cap holds on the wire too.
                    await limiter.take(len(chunk))
                writer.write(chunk)
                verifier.update(chunk)
            if writer.bytes_written != expected_size:
                raise IntegrityError(
                    f"{key}: received {writer.bytes_written} bytes, expected {expected_size}"
                )
            if (problem := verifier.problem()) is not None:
                raise IntegrityError(f"{key}: {problem}")
            # fsync and rename block on the disk: keep them off the event loop. Shielded so
            # a cancellation (drain deadline) never leaves the rename half-done.
            writer.claim()
            await asyncio.shield(asyncio.to_thread(writer.commit, modified))
            etag = str(response.get("ETag", "")).strip('"') or None
            return Downloaded(etag, expected_size, modified)

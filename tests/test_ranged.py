"""Large objects as parallel ranged GETs (``s3pull.ranged``), through ``download()``.

Real moto server, real files; the thresholds are lowered (``Tuning``) so a few MiB stand
for a large object. A fault proxy between the client and moto counts the requests and
cuts, holds or corrupts single parts (``Rule(ranged=True)``). Speed and peak memory are
benchmark numbers (bench/README.md), never asserted here.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import render_config, wait_until
from faultproxy import FaultProxy, Rule
from faults_conftest import temp_files
from s3pull.aws import open_clients
from s3pull.bandwidth import TokenBucket
from s3pull.config import parse_config
from s3pull.download import (
    BODY_ATTEMPTS,
    RETRIED_BODY_ERRORS,
    Downloaded,
    IntegrityError,
    VersionChanged,
    download,
)
from s3pull.emulator import Pipeline
from s3pull.ranged import RANGE_ATTEMPTS, Tuning

KIB = 1 << 10
MIB = 1 << 20
# 2.5 MiB in 256 KiB parts: ten parts (the last one short), three streams at a time.
TUNING = Tuning(threshold=1 * MIB, part_size=256 * KIB, streams=3)
SIZE = 2 * MIB + 512 * KIB
PARTS = 10
MULTIPART_SIZE = 5 * MIB + 512 * KIB
MARKER = b"sixteen byte tag"


def with_markers(body: bytes) -> bytes:
    """``body`` with ``MARKER`` 100 bytes into every part: a rule that corrupts it hits
    whichever ranged GET reaches the proxy first."""
    data = bytearray(body)
    for start in range(0, len(data), TUNING.part_size):
        data[start + 100 : start + 100 + len(MARKER)] = MARKER
    return bytes(data)


@pytest.fixture
def proxy(moto_endpoint: str) -> Iterator[FaultProxy]:
    with FaultProxy(moto_endpoint) as running:
        yield running


@pytest.fixture
async def s3_client(tmp_path: Path, pipeline: Pipeline, proxy: FaultProxy) -> AsyncIterator[Any]:
    """The agent's S3 client, as ``open_clients`` makes it, talking through the proxy."""
    mirror = {"name": "m", "bucket": pipeline.bucket, "prefix": "", "directory": tmp_path / "m"}
    config = render_config(pipeline, tmp_path / "state", [mirror])
    config = config.replace(pipeline.endpoint, proxy.url)
    async with open_clients(parse_config(config, tmp_path / "s3pull.toml"), "s3") as clients:
        yield clients.s3


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "dl"
    path.mkdir()
    return path


def put(s3: Any, bucket: str, key: str, body: bytes) -> str:
    return str(s3.put_object(Bucket=bucket, Key=key, Body=body)["ETag"]).strip('"')


def put_multipart(s3: Any, bucket: str, key: str, body: bytes) -> str:
    """Upload ``body`` in two parts (moto wants 5 MiB but the last): an ETag ending in
    ``-2`` that is no MD5, so only the size, If-Match and the ETag guard the content."""
    upload = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    done = [
        {
            "PartNumber": number,
            "ETag": s3.upload_part(
                Bucket=bucket, Key=key, UploadId=upload, PartNumber=number, Body=chunk
            )["ETag"],
        }
        for number, chunk in ((1, body[: 5 * MIB]), (2, body[5 * MIB :]))
    ]
    completed = s3.complete_multipart_upload(
        Bucket=bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": done}
    )
    return str(completed["ETag"]).strip('"')


def gets(proxy: FaultProxy, key: str) -> int:
    return proxy.seen("s3", "GetObject", key)


async def test_a_large_object_comes_in_ranges_and_is_verified(
    s3_client: Any, s3: Any, pipeline: Pipeline, proxy: FaultProxy, root: Path
) -> None:
    body = os.urandom(SIZE)
    etag = put(s3, pipeline.bucket, "big.bin", body)
    assert etag == hashlib.md5(body).hexdigest()  # a single PUT: the ETag is the MD5

    result = await download(
        s3_client, pipeline.bucket, "big.bin", root, ("big.bin",), tuning=TUNING
    )

    assert isinstance(result, Downloaded) and (result.etag, result.size) == (etag, SIZE)
    assert (root / "big.bin").read_bytes() == body
    # The plain GET brought part 0; each other part is one ranged GET, nothing more.
    assert gets(proxy, "big.bin") == PARTS
    assert temp_files(root) == []


async def test_a_small_object_costs_one_request_as_before(
    s3_client: Any, s3: Any, pipeline: Pipeline, proxy: FaultProxy, root: Path
) -> None:
    body = os.urandom(TUNING.threshold - 1)
    put(s3, pipeline.bucket, "small.bin", body)

    await download(s3_client, pipeline.bucket, "small.bin", root, ("small.bin",), tuning=TUNING)

    assert (root / "small.bin").read_bytes() == body
    assert gets(proxy, "small.bin") == 1


async def test_a_server_that_ignores_ranges_still_gets_the_object_in_one_stream(
    s3_client: Any, s3: Any, pipeline: Pipeline, proxy: FaultProxy, root: Path
) -> None:
    body = os.urandom(SIZE)
    put(s3, pipeline.bucket, "whole.bin", body)
    # Every ranged GET reaches the server without its Range: 200, the whole object.
    proxy.add(Rule("ignore-range", "s3", "GetObject", key_prefix="whole.bin", ranged=True))

    result = await download(
        s3_client, pipeline.bucket, "whole.bin", root, ("whole.bin",), tuning=TUNING
    )

    assert isinstance(result, Downloaded) and result.size == SIZE
    assert (root / "whole.bin").read_bytes() == body
    assert temp_files(root) == []


async def test_a_corrupted_part_fails_the_md5_and_the_object_is_fetched_again(
    s3_client: Any,
    s3: Any,
    pipeline: Pipeline,
    proxy: FaultProxy,
    root: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    body = with_markers(os.urandom(SIZE))
    put(s3, pipeline.bucket, "big.bin", body)
    # Sixteen bytes of one part flipped on the way: the size and the range stay right,
    # only the MD5 of the whole can tell.
    flipped = bytes(b ^ 0xFF for b in MARKER)
    proxy.add(Rule("rewrite", "s3", "GetObject", ranged=True, old=MARKER, new=flipped, times=1))

    with caplog.at_level(logging.WARNING):
        await download(s3_client, pipeline.bucket, "big.bin", root, ("big.bin",), tuning=TUNING)

    assert (root / "big.bin").read_bytes() == body
    assert "does not match ETag" in caplog.text
    assert gets(proxy, "big.bin") == 2 * PARTS  # the whole object again, once
    assert temp_files(root) == []


async def test_a_part_corrupted_every_time_is_an_error_and_leaves_nothing(
    s3_client: Any, s3: Any, pipeline: Pipeline, proxy: FaultProxy, root: Path
) -> None:
    put(s3, pipeline.bucket, "big.bin", with_markers(os.urandom(SIZE)))
    proxy.add(Rule("rewrite", "s3", "GetObject", ranged=True, old=MARKER, new=MARKER[::-1]))

    with pytest.raises(IntegrityError, match="does not match ETag"):
        await download(s3_client, pipeline.bucket, "big.bin", root, ("big.bin",), tuning=TUNING)

    assert os.listdir(root) == []
    assert gets(proxy, "big.bin") == BODY_ATTEMPTS * PARTS


async def test_where_the_etag_is_no_md5_the_checksum_s3_stored_checks_the_parts(
    s3_client: Any, s3: Any, pipeline: Pipeline, proxy: FaultProxy, root: Path
) -> None:
    # SSE-KMS: the ETag is no MD5, the CRC32 stored at upload is what guards the bytes.
    s3.put_object(
        Bucket=pipeline.bucket,
        Key="kms.bin",
        Body=with_markers(os.urandom(SIZE)),
        ChecksumAlgorithm="CRC32",
        ServerSideEncryption="aws:kms",
    )
    proxy.add(Rule("rewrite", "s3", "GetObject", ranged=True, old=MARKER, new=MARKER[::-1]))

    with pytest.raises(IntegrityError, match=r"ChecksumCRC32 .* does not match"):
        await download(s3_client, pipeline.bucket, "kms.bin", root, ("kms.bin",), tuning=TUNING)

    assert os.listdir(root) == []
    assert gets(proxy, "kms.bin") == BODY_ATTEMPTS * PARTS


async def test_a_multipart_object_is_checked_by_size(
    s3_client: Any, s3: Any, pipeline: Pipeline, root: Path
) -> None:
    body = os.urandom(MULTIPART_SIZE)
    etag = put_multipart(s3, pipeline.bucket, "multi.bin", body)
    assert etag.endswith("-2")

    result = await download(
        s3_client, pipeline.bucket, "multi.bin", root, ("multi.bin",), tuning=TUNING
    )

    assert isinstance(result, Downloaded) and result.etag == etag
    assert (root / "multi.bin").read_bytes() == body


async def test_an_overwrite_between_ranges_never_mixes_two_versions(
    s3_client: Any, s3: Any, pipeline: Pipeline, proxy: FaultProxy, root: Path
) -> None:
    # Multipart, so no MD5 would catch a mix: only If-Match and the ETag can.
    old = os.urandom(MULTIPART_SIZE)
    new = os.urandom(MULTIPART_SIZE)  # same size: only the content tells them apart
    put_multipart(s3, pipeline.bucket, "big.bin", old)
    # Hold one part at the proxy while the others arrive, and overwrite the object
    # meanwhile: that part reaches S3 after the overwrite. Without If-Match it would
    # bring bytes of the new version into a file of the old one.
    held = proxy.add(Rule("pass", "s3", "GetObject", ranged=True, delay=3.0, times=1))
    fetching = asyncio.create_task(
        download(s3_client, pipeline.bucket, "big.bin", root, ("big.bin",), tuning=TUNING)
    )
    await asyncio.to_thread(wait_until, lambda: held.hits, what="a part held at the proxy")
    new_etag = await asyncio.to_thread(put_multipart, s3, pipeline.bucket, "big.bin", new)

    result = await fetching

    # S3 answered 412 to the held part; the download started over and got the new one.
    assert isinstance(result, Downloaded) and result.etag == new_etag
    assert (root / "big.bin").read_bytes() == new
    assert temp_files(root) == []


async def test_an_overwrite_between_ranges_of_a_promised_version_is_version_changed(
    s3_client: Any, s3: Any, pipeline: Pipeline, proxy: FaultProxy, root: Path
) -> None:
    promised = put_multipart(s3, pipeline.bucket, "big.bin", os.urandom(MULTIPART_SIZE))
    held = proxy.add(Rule("pass", "s3", "GetObject", ranged=True, delay=3.0, times=1))
    fetching = asyncio.create_task(
        download(
            s3_client,
            pipeline.bucket,
            "big.bin",
            root,
            ("big.bin",),
            if_match=promised,
            tuning=TUNING,
        )
    )
    await asyncio.to_thread(wait_until, lambda: held.hits, what="a part held at the proxy")
    await asyncio.to_thread(
        put_multipart, s3, pipeline.bucket, "big.bin", os.urandom(MULTIPART_SIZE)
    )

    with pytest.raises(VersionChanged, match=promised):
        await fetching
    assert os.listdir(root) == []


async def test_a_part_cut_mid_body_is_resumed_alone(
    s3_client: Any,
    s3: Any,
    pipeline: Pipeline,
    proxy: FaultProxy,
    root: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    body = os.urandom(SIZE)
    put(s3, pipeline.bucket, "big.bin", body)
    cut = proxy.add(Rule("reset", "s3", "GetObject", ranged=True, fraction=0.5, times=1))

    with caplog.at_level(logging.WARNING):
        await download(s3_client, pipeline.bucket, "big.bin", root, ("big.bin",), tuning=TUNING)

    assert cut.hits == 1
    assert (root / "big.bin").read_bytes() == body
    # One request more than the parts: the rest of the cut part, not the whole object.
    assert gets(proxy, "big.bin") == PARTS + 1
    assert "resuming bytes" in caplog.text
    assert temp_files(root) == []


async def test_a_part_cut_every_time_gives_up_after_bounded_attempts(
    s3_client: Any, s3: Any, pipeline: Pipeline, proxy: FaultProxy, root: Path
) -> None:
    put(s3, pipeline.bucket, "big.bin", os.urandom(SIZE))
    proxy.add(Rule("reset", "s3", "GetObject", ranged=True, fraction=0.5))

    with pytest.raises(RETRIED_BODY_ERRORS):
        await download(s3_client, pipeline.bucket, "big.bin", root, ("big.bin",), tuning=TUNING)

    assert os.listdir(root) == []
    # Each of download()'s attempts: its plain GET, then parts until one has been cut
    # RANGE_ATTEMPTS times; never more than every part that many times.
    assert gets(proxy, "big.bin") <= BODY_ATTEMPTS * (1 + (PARTS - 1) * RANGE_ATTEMPTS)


async def test_every_part_is_paced_by_the_mirror_limiter(
    s3_client: Any, s3: Any, pipeline: Pipeline, root: Path
) -> None:
    body = os.urandom(SIZE)
    put(s3, pipeline.bucket, "big.bin", body)
    limiter = TokenBucket(64 * MIB)  # generous: the test counts bytes, not time

    await download(
        s3_client,
        pipeline.bucket,
        "big.bin",
        root,
        ("big.bin",),
        limiter=limiter,
        tuning=TUNING,
    )

    assert limiter.bytes == SIZE
    assert (root / "big.bin").read_bytes() == body


async def test_a_cancelled_download_leaves_no_file_and_no_thread(
    s3_client: Any, s3: Any, pipeline: Pipeline, proxy: FaultProxy, root: Path
) -> None:
    put(s3, pipeline.bucket, "big.bin", os.urandom(SIZE))
    # Slow parts, so the download is surely in the middle when it is cancelled.
    slow = proxy.add(Rule("pass", "s3", "GetObject", ranged=True, rate=64 * KIB))
    fetching = asyncio.create_task(
        download(s3_client, pipeline.bucket, "big.bin", root, ("big.bin",), tuning=TUNING)
    )
    await asyncio.to_thread(wait_until, lambda: slow.hits >= 2, what="two slow parts")

    fetching.cancel()
    with pytest.raises(asyncio.CancelledError):
        await fetching

    assert os.listdir(root) == []
    await asyncio.to_thread(
        wait_until,
        lambda: not any(t.name == "s3pull-md5" for t in threading.enumerate()),
        what="the hashing thread to end",
    )

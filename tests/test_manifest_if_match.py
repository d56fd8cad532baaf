"""A manifest's ETags hold when downloading, not only when listing: each file the
manifest names with an ETag is fetched with ``If-Match``, so a file overwritten between
the listing and the download fails the attempt (412, retried later) instead of running
the command on content the manifest did not promise.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import Agent, queue_depth, render_config, wait_until
from faultproxy import FaultProxy, Rule
from faults_conftest import dead_letters, temp_files, through, write_config
from s3pull.aws import open_clients
from s3pull.config import parse_config
from s3pull.download import Downloaded, download
from s3pull.emulator import Pipeline, create_pipeline
from s3pull.errors import S3PullError
from test_trigger import runs

RECORD_BATCH = Path(__file__).parent / "commands" / "record_batch.py"


@pytest.fixture
def proxy(moto_endpoint: str) -> Iterator[FaultProxy]:
    with FaultProxy(moto_endpoint) as running:
        yield running


@pytest.fixture
def patient(moto_endpoint: str) -> Pipeline:
    """A queue that lets a message fail up to 10 times before dead-lettering."""
    return create_pipeline(moto_endpoint, f"m-{uuid.uuid4().hex[:16]}", max_receive_count=10)


@pytest.fixture
async def s3_client(tmp_path: Path, pipeline: Pipeline) -> AsyncIterator[Any]:
    mirror = {"name": "m", "bucket": pipeline.bucket, "prefix": "m/", "directory": tmp_path / "m"}
    text = render_config(pipeline, tmp_path / "state", [mirror])
    async with open_clients(parse_config(text, tmp_path / "s3pull.toml"), "s3") as clients:
        yield clients.s3


def put(s3: Any, bucket: str, key: str, body: bytes) -> str:
    return str(s3.put_object(Bucket=bucket, Key=key, Body=body)["ETag"]).strip('"')


async def test_download_with_if_match_fails_unless_s3_holds_that_version(
    s3_client: Any, s3: Any, pipeline: Pipeline, tmp_path: Path
) -> None:
    root = tmp_path / "dl"
    root.mkdir()
    promised = put(s3, pipeline.bucket, "m/a.csv", b"promised")

    result = await download(
        s3_client, pipeline.bucket, "m/a.csv", root, ("a.csv",), if_match=promised
    )
    assert isinstance(result, Downloaded) and result.etag == promised
    assert (root / "a.csv").read_bytes() == b"promised"

    put(s3, pipeline.bucket, "m/a.csv", b"overwritten")
    with pytest.raises(S3PullError, match="m/a.csv.*" + promised):
        await download(s3_client, pipeline.bucket, "m/a.csv", root, ("b.csv",), if_match=promised)
    # Deleted is not the promised version either: never "gone", never skipped.
    s3.delete_object(Bucket=pipeline.bucket, Key="m/a.csv")
    with pytest.raises(S3PullError, match="m/a.csv.*" + promised):
        await download(s3_client, pipeline.bucket, "m/a.csv", root, ("c.csv",), if_match=promised)
    assert sorted(p.name for p in root.iterdir()) == ["a.csv"]
    assert temp_files(root) == []


def test_a_file_overwritten_after_listing_never_reaches_the_command(
    s3: Any,
    patient: Pipeline,
    proxy: FaultProxy,
    tmp_path: Path,
    start_agent: Callable[..., Agent],
) -> None:
    output = tmp_path / "runs.jsonl"
    config = write_config(
        tmp_path / "s3pull.toml",
        through(patient, proxy.url),
        tmp_path / "state",
        [],
        [
            {
                "name": "orders",
                "bucket": patient.bucket,
                "prefix": "incoming/",
                "marker": "_READY",
                "directory": tmp_path / "batches",
                "command": [sys.executable, str(RECORD_BATCH), str(output)],
                "manifest_timeout_seconds": 60,
            }
        ],
    )
    agent = start_agent(config)
    agent.wait_ready()
    promised = put(s3, patient.bucket, "incoming/m1/a.csv", b"promised")
    put(s3, patient.bucket, "incoming/m1/b.csv", b"b")
    # Hold the download of a.csv at the proxy long enough to overwrite it after the
    # listing matched the manifest and before S3 answers the GET.
    held = proxy.add(
        Rule("pass", "s3", "GetObject", key_prefix="incoming/m1/a.csv", delay=3.0, times=1)
    )
    manifest = f"a.csv {promised}\nb.csv\n"
    put(s3, patient.bucket, "incoming/m1/_READY", manifest.encode())
    wait_until(lambda: held.hits, what="the download of a.csv")
    put(s3, patient.bucket, "incoming/m1/a.csv", b"swapped in")

    agent.wait_for_log("orders: batch incoming/m1/ failed")
    assert runs(output) == [], "the command never sees content the manifest did not promise"
    assert "could not download incoming/m1/a.csv" in agent.log
    # The retry waits for the manifest's version; once it is back, the batch runs on it.
    agent.wait_for_log("waiting for 1 file(s) the manifest lists")
    put(s3, patient.bucket, "incoming/m1/a.csv", b"promised")

    (run,) = wait_until(lambda: runs(output), timeout=60, what="the command to run")
    assert run["contents"] == {"a.csv": "promised", "b.csv": "b"}
    agent.wait_for_log("orders: batch incoming/m1/ succeeded")
    wait_until(lambda: queue_depth(patient, patient.queue_url) == 0, what="the queue to drain")
    assert dead_letters(patient.endpoint, patient.dead_letter_url) == []
    assert agent.stop() == 0
    assert len(runs(output)) == 1

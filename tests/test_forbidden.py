"""Missing or forbidden (SPEC round 2): a role without ``s3:ListBucket`` on a key's prefix
gets 403 AccessDenied, not 404, for a missing key on HEAD and GET. moto enforces no IAM,
so the fault proxy answers as AWS does (``forbid-missing``) and stands for a listing the
role may not do (a 403 rule on ListObjectsV2 under a prefix).

The agent confirms absence with a listing of exactly the key: absent there, it is gone
(deleted, ``marker-gone``, never retried); listed, or the listing refused too, it is
forbidden: an error naming the permission, and the message comes back.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import Agent, queue_depth, render_config, wait_until
from faultproxy import FaultProxy, Rule
from faults_conftest import dead_letters, through, write_config
from s3pull.aws import open_clients
from s3pull.config import parse_config
from s3pull.download import GONE, download
from s3pull.emulator import Pipeline
from s3pull.errors import S3PullError
from s3pull.events import ChangeKind, ObjectChange
from s3pull.ledger import Ledger
from s3pull.mirror import Mirror
from s3pull.trigger import Trigger

RECORD_BATCH = Path(__file__).parent / "commands" / "record_batch.py"


@pytest.fixture
def proxy(moto_endpoint: str) -> Iterator[FaultProxy]:
    with FaultProxy(moto_endpoint) as running:
        yield running


@dataclass
class Lab:
    """A mirror of ``data/`` and a trigger on ``in/``, in-process, all S3 via the proxy."""

    s3: Any
    mirror: Mirror
    trigger: Trigger


@pytest.fixture
async def lab(tmp_path: Path, pipeline: Pipeline, proxy: FaultProxy) -> AsyncIterator[Lab]:
    mirror = {
        "name": "data",
        "bucket": pipeline.bucket,
        "prefix": "data/",
        "directory": tmp_path / "mirror",
    }
    trigger = {
        "name": "batches",
        "bucket": pipeline.bucket,
        "prefix": "in/",
        "marker": "_READY",
        "directory": tmp_path / "batches",
        "command": ["/bin/true"],
    }
    text = render_config(through(pipeline, proxy.url), tmp_path / "state", [mirror], [trigger])
    config = parse_config(text, tmp_path / "s3pull.toml")
    for directory in ("state", "mirror", "batches"):
        (tmp_path / directory).mkdir()
    ledger = Ledger.open(config.agent.state_directory)
    async with open_clients(config, "s3") as clients:
        yield Lab(
            clients.s3,
            Mirror(config.mirrors[0], clients.s3, ledger),
            Trigger(config.triggers[0], clients.s3, ledger, 4),
        )
    ledger.close()


def change(pipeline: Pipeline, kind: ChangeKind, key: str) -> ObjectChange:
    name = "ObjectCreated:Put" if kind == "created" else "ObjectRemoved:Delete"
    return ObjectChange(kind, name, pipeline.bucket, key, "2026-11-30T10:00:00.000Z")


def forbid_missing(proxy: FaultProxy, prefix: str) -> None:
    """HEAD and GET of a missing key under ``prefix`` answer 403, as on AWS."""
    proxy.add(Rule("forbid-missing", "s3", "HeadObject", key_prefix=prefix))
    proxy.add(Rule("forbid-missing", "s3", "GetObject", key_prefix=prefix))


def deny_listing(proxy: FaultProxy, prefix: str) -> None:
    """``s3:ListBucket`` not granted for ``prefix``."""
    proxy.add(
        Rule("error", "s3", "ListObjectsV2", key_prefix=prefix, status=403, code="AccessDenied")
    )


# -- in-process: the mirror, the download, the marker -----------------------------------


async def test_a_403_for_a_deleted_key_is_gone_once_a_listing_confirms_it(
    lab: Lab, s3: Any, pipeline: Pipeline, proxy: FaultProxy
) -> None:
    forbid_missing(proxy, "data/")
    target = lab.mirror.config.directory / "a.txt"
    s3.put_object(Bucket=pipeline.bucket, Key="data/a.txt", Body=b"a")
    assert (await lab.mirror.apply(change(pipeline, "created", "data/a.txt"))).outcome == (
        "downloaded"
    )
    s3.delete_object(Bucket=pipeline.bucket, Key="data/a.txt")

    # The remove event: HEAD says 403, the listing of exactly that key says it is gone.
    removed = await lab.mirror.apply(change(pipeline, "removed", "data/a.txt"))

    assert removed.outcome == "deleted"
    assert not target.exists()
    assert proxy.seen("s3", "HeadObject", key="data/a.txt") == 1
    assert proxy.seen("s3", "ListObjectsV2", key="data/a.txt") == 1
    # A create event for a key already gone: GET says 403, the listing says gone.
    created = await lab.mirror.apply(change(pipeline, "created", "data/never.txt"))
    assert created.outcome == "absent"
    assert proxy.seen("s3", "GetObject", key="data/never.txt") == 1
    assert proxy.seen("s3", "ListObjectsV2", key="data/never.txt") == 1


async def test_download_tells_a_403_for_a_missing_key_from_one_for_a_forbidden_object(
    lab: Lab, s3: Any, pipeline: Pipeline, proxy: FaultProxy, tmp_path: Path
) -> None:
    # Rules match in order: a key that exists but may not be read (a bucket policy's
    # Deny, a KMS key) first. The listing shows it, so it is forbidden, never "gone".
    deny = Rule("error", "s3", "GetObject", key_prefix="k/secret", status=403, code="AccessDenied")
    proxy.add(deny)
    forbid_missing(proxy, "k/")
    root = tmp_path / "dl"
    root.mkdir()
    assert await download(lab.s3, pipeline.bucket, "k/missing", root, ("missing",)) == GONE

    s3.put_object(Bucket=pipeline.bucket, Key="k/secret", Body=b"s")
    with pytest.raises(S3PullError, match="s3:GetObject"):
        await download(lab.s3, pipeline.bucket, "k/secret", root, ("secret",))
    assert deny.hits == 1
    assert list(root.iterdir()) == []


async def test_a_403_with_the_listing_denied_too_is_an_error_naming_s3_listbucket(
    lab: Lab, s3: Any, pipeline: Pipeline, proxy: FaultProxy
) -> None:
    target = lab.mirror.config.directory / "locked" / "x.txt"
    s3.put_object(Bucket=pipeline.bucket, Key="data/locked/x.txt", Body=b"x")
    await lab.mirror.apply(change(pipeline, "created", "data/locked/x.txt"))
    forbid_missing(proxy, "data/")
    deny_listing(proxy, "data/locked/")
    s3.delete_object(Bucket=pipeline.bucket, Key="data/locked/x.txt")

    with pytest.raises(S3PullError, match=r"data/locked/x\.txt.*s3:ListBucket"):
        await lab.mirror.apply(change(pipeline, "removed", "data/locked/x.txt"))
    assert target.read_bytes() == b"x", "nothing is deleted on a guess"


async def test_a_403_for_a_deleted_marker_is_marker_gone_once_a_listing_confirms_it(
    lab: Lab, s3: Any, pipeline: Pipeline, proxy: FaultProxy
) -> None:
    forbid_missing(proxy, "in/")
    s3.put_object(Bucket=pipeline.bucket, Key="in/b1/data.csv", Body=b"1")
    s3.put_object(Bucket=pipeline.bucket, Key="in/b1/_READY", Body=b"")
    s3.delete_object(Bucket=pipeline.bucket, Key="in/b1/_READY")

    assert await lab.trigger.run(change(pipeline, "created", "in/b1/_READY")) == "marker-gone"
    assert proxy.seen("s3", "ListObjectsV2", key="in/b1/_READY") == 1
    assert not (lab.trigger.config.directory / "b1").exists()

    s3.put_object(Bucket=pipeline.bucket, Key="in/b2/_READY", Body=b"")
    s3.delete_object(Bucket=pipeline.bucket, Key="in/b2/_READY")
    deny_listing(proxy, "in/b2/")
    with pytest.raises(S3PullError, match="s3:ListBucket"):
        await lab.trigger.run(change(pipeline, "created", "in/b2/_READY"))


# -- end to end: the agent, real notifications ------------------------------------------


def test_deletions_apply_through_403s_and_a_forbidden_listing_is_retried_and_said(
    s3: Any,
    pipeline: Pipeline,
    proxy: FaultProxy,
    tmp_path: Path,
    start_agent: Callable[..., Agent],
) -> None:
    # As on AWS with s3:ListBucket granted on data/ and incoming/ (conditions on
    # s3:prefix), but not on data/locked/.
    forbid_missing(proxy, "data/")
    forbid_missing(proxy, "incoming/")
    deny_listing(proxy, "data/locked/")
    mirror = tmp_path / "mirror"
    output = tmp_path / "runs.jsonl"
    config = write_config(
        tmp_path / "s3pull.toml",
        through(pipeline, proxy.url),
        tmp_path / "state",
        [{"name": "data", "bucket": pipeline.bucket, "prefix": "data/", "directory": mirror}],
        [
            {
                "name": "orders",
                "bucket": pipeline.bucket,
                "prefix": "incoming/",
                "marker": "_READY",
                "directory": tmp_path / "batches",
                "command": [sys.executable, str(RECORD_BATCH), str(output)],
            }
        ],
    )
    # Uploaded and withdrawn before the agent reads it: its events wait in the queue.
    s3.put_object(Bucket=pipeline.bucket, Key="incoming/b1/orders.csv", Body=b"1")
    s3.put_object(Bucket=pipeline.bucket, Key="incoming/b1/_READY", Body=b"")
    s3.delete_object(Bucket=pipeline.bucket, Key="incoming/b1/_READY")
    agent = start_agent(config)
    agent.wait_ready()
    for key in ("data/keep.txt", "data/drop.txt", "data/sub/drop.txt", "data/locked/x.txt"):
        s3.put_object(Bucket=pipeline.bucket, Key=key, Body=key.encode())
    wait_until(
        lambda: (mirror / "locked" / "x.txt").exists() and (mirror / "sub" / "drop.txt").exists(),
        what="the uploads on disk",
    )
    wait_until(lambda: queue_depth(pipeline, pipeline.queue_url) == 0, what="the uploads")

    for key in ("data/drop.txt", "data/sub/drop.txt", "data/locked/x.txt"):
        s3.delete_object(Bucket=pipeline.bucket, Key=key)

    agent.wait_for_log("deleted data/drop.txt (ObjectRemoved:Delete")
    agent.wait_for_log("deleted data/sub/drop.txt (ObjectRemoved:Delete")
    agent.wait_for_log("orders: batch incoming/b1/ marker-gone")
    assert not (mirror / "drop.txt").exists()
    assert not (mirror / "sub" / "drop.txt").exists()
    assert (mirror / "keep.txt").read_bytes() == b"data/keep.txt"
    assert not output.exists(), "no command for a withdrawn batch"
    # Each told apart by one listing of exactly its key.
    for key in ("data/drop.txt", "data/sub/drop.txt", "incoming/b1/_READY"):
        assert proxy.seen("s3", "ListObjectsV2", key=key) == 1, key

    # Where the role may not list, a 403 cannot be told from "forbidden": the file stays,
    # the log names the permission, and the message is retried into the dead-letter queue.
    agent.wait_for_log("could not apply ObjectRemoved:Delete to data/locked/x.txt", count=2)
    failures = [line for line in agent.log.splitlines() if "data/locked/x.txt, will retry" in line]
    assert all("s3:ListBucket" in line for line in failures), failures
    assert (mirror / "locked" / "x.txt").exists()
    letters = wait_until(
        lambda: dead_letters(pipeline.endpoint, pipeline.dead_letter_url), what="a dead letter"
    )
    assert len(letters) == 1 and "locked" in letters[0]
    retried = [line for line in agent.log.splitlines() if "will retry" in line]
    assert all("data/locked/x.txt" in line for line in retried), retried
    assert agent.stop() == 0

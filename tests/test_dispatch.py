"""The daemon's rooms in-process: the dispatcher, ``Mirror.apply``, the inbox and the
download path, against the moto server with the real S3 -> SNS -> SQS path.

Contracts are asserted on return values, files and queue state, never on log text; the
subprocess agent (test_agent.py) keeps what only signals and exit codes can show.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import queue_depth, receive_bodies, render_config, wait_until
from s3pull.aws import Clients, open_clients
from s3pull.config import Config, parse_config
from s3pull.dispatch import Consumer, Dispatcher
from s3pull.download import GONE, NOT_MODIFIED, Downloaded, download
from s3pull.emulator import Pipeline, client
from s3pull.events import ChangeKind, ObjectChange
from s3pull.inbox import Inbox, Message
from s3pull.ledger import Ledger
from s3pull.metrics import Metrics, Recorder
from s3pull.mirror import Applied, Mirror
from s3pull.plan import execute, plan
from s3pull.sources import Trust
from s3pull.status import Stats
from s3pull.stopping import StopSignal
from s3pull.trigger import Trigger


@dataclass
class Room:
    """One dispatcher wired to one queue, one mirror and (optionally) one trigger."""

    config: Config
    clients: Clients
    ledger: Ledger
    stats: Stats
    recorder: Recorder
    dispatcher: Dispatcher
    consumer: Consumer
    mirror: Mirror

    @property
    def inbox(self) -> Inbox:
        return self.consumer.inbox

    async def receive_one(self) -> Message:
        for _ in range(20):
            messages = await self.inbox.receive(1)
            if messages:
                return messages[0]
        raise AssertionError("no message arrived")

    async def flush_deletes(self) -> None:
        """Run the deleter until everything acknowledged so far is deleted."""
        self.inbox.close()
        await self.inbox.delete_forever()


@pytest.fixture
async def room(tmp_path: Path, pipeline: Pipeline) -> AsyncIterator[Room]:
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
        "command": ["/bin/sleep", "30"],
    }
    path = tmp_path / "s3pull.toml"
    text = render_config(pipeline, tmp_path / "state", [mirror], [trigger])
    config = parse_config(text, path)
    for directory in ("state", "mirror", "batches"):  # as the daemon's start-up does
        (tmp_path / directory).mkdir()
    # The s3:TestEvent that setting up the notification sent: not what these tests are about.
    receive_bodies(client(pipeline.endpoint, "sqs"), pipeline.queue_url)
    ledger = Ledger.open(config.agent.state_directory)
    stats = Stats()
    recorder = Recorder(stats, Metrics())
    async with open_clients(config, "s3", "sqs") as clients:
        mirrors = [Mirror(config.mirrors[0], clients.s3, ledger, recorder)]
        triggers = [Trigger(config.triggers[0], clients.s3, ledger, 4, recorder)]
        inbox = Inbox(clients.sqs, pipeline.queue_url, 1, 2)
        dispatcher = Dispatcher(recorder, 4, Trust.from_config(config))
        consumer = Consumer(inbox, mirrors, triggers)
        yield Room(config, clients, ledger, stats, recorder, dispatcher, consumer, mirrors[0])
    ledger.close()


async def eventually(predicate: Callable[[], object]) -> None:
    """The async twin of conftest's ``wait_until``: 30 s as a safety net, never a
    measurement."""
    async with asyncio.timeout(30):
        for _ in itertools.count():
            if predicate():
                return
            await asyncio.sleep(0.05)


def visible_messages(pipeline: Pipeline, sqs: Any) -> int:
    attributes = sqs.get_queue_attributes(
        QueueUrl=pipeline.queue_url, AttributeNames=["ApproximateNumberOfMessages"]
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"])


# -- the dispatcher ---------------------------------------------------------------------


async def test_a_notification_is_applied_then_its_message_deleted(
    room: Room, s3: Any, pipeline: Pipeline
) -> None:
    s3.put_object(Bucket=pipeline.bucket, Key="data/a/one.txt", Body=b"one")
    message = await room.receive_one()

    assert await room.dispatcher.handle(room.consumer, message) == "acknowledged"
    await room.flush_deletes()

    assert (room.mirror.config.directory / "a" / "one.txt").read_bytes() == b"one"
    assert queue_depth(pipeline, pipeline.queue_url) == 0
    assert room.stats.applied == 1


async def test_a_body_that_cannot_be_parsed_is_left_for_the_dead_letter_queue(
    room: Room, sqs: Any, pipeline: Pipeline
) -> None:
    sqs.send_message(QueueUrl=pipeline.queue_url, MessageBody="{not json")
    message = await room.receive_one()

    assert await room.dispatcher.handle(room.consumer, message) == "unparseable"
    await room.flush_deletes()

    assert queue_depth(pipeline, pipeline.queue_url) == 1  # still there, not deleted
    assert room.stats.errors == 1


async def test_a_failing_change_is_retried_later_and_nothing_is_deleted(
    room: Room, sqs: Any, pipeline: Pipeline
) -> None:
    # The mirror's directory sits below a regular file: every write fails with OSError.
    blocker = room.mirror.config.directory.parent / "blocker"
    blocker.write_text("in the way")
    broken_config = dataclasses.replace(room.config.mirrors[0], directory=blocker / "mirror")
    broken = Mirror(broken_config, room.clients.s3, room.ledger, room.recorder)
    # Handed back for 30 s rather than the room's 2: on a loaded machine 2 s can pass
    # before the queue is looked at, and the message would be visible again by then.
    patient = Inbox(room.clients.sqs, pipeline.queue_url, 1, 30)
    consumer = Consumer(patient, [broken], [])
    await room.clients.s3.put_object(Bucket=pipeline.bucket, Key="data/x.txt", Body=b"x")
    message = await room.receive_one()

    assert await room.dispatcher.handle(consumer, message) == "retry"
    await room.flush_deletes()

    assert queue_depth(pipeline, pipeline.queue_url) == 1
    assert visible_messages(pipeline, sqs) == 0  # handed back with a delay, not at once
    assert room.stats.errors == 1


async def test_an_unsafe_key_is_refused_and_its_message_deleted(
    room: Room, sqs: Any, pipeline: Pipeline, tmp_path: Path
) -> None:
    body = {
        "Records": [
            {
                "eventVersion": "2.1",
                "eventSource": "aws:s3",
                "eventTime": "2026-11-30T10:00:00.000Z",
                "eventName": "ObjectCreated:Put",
                "s3": {
                    "bucket": {"name": pipeline.bucket},
                    "object": {"key": "data/../../escaped.txt", "size": 1},
                },
            }
        ]
    }
    sqs.send_message(QueueUrl=pipeline.queue_url, MessageBody=json.dumps(body))
    message = await room.receive_one()

    assert await room.dispatcher.handle(room.consumer, message) == "acknowledged"
    await room.flush_deletes()

    assert queue_depth(pipeline, pipeline.queue_url) == 0
    assert room.stats.refused == 1
    assert not (tmp_path / "escaped.txt").exists()
    assert not (tmp_path.parent / "escaped.txt").exists()


async def test_a_record_from_an_unconfigured_bucket_is_refused_and_deleted(
    room: Room, sqs: Any, pipeline: Pipeline, s3: Any
) -> None:
    body = {
        "Records": [
            {
                "eventVersion": "2.1",
                "eventSource": "aws:s3",
                "eventTime": "2026-11-30T10:00:00.000Z",
                "eventName": "ObjectCreated:Put",
                "s3": {"bucket": {"name": "someone-elses"}, "object": {"key": "data/x.txt"}},
            }
        ]
    }
    sqs.send_message(QueueUrl=pipeline.queue_url, MessageBody=json.dumps(body))
    message = await room.receive_one()
    # The same key in the configured bucket: believed, the event would fetch it.
    s3.put_object(Bucket=pipeline.bucket, Key="data/x.txt", Body=b"x")

    assert await room.dispatcher.handle(room.consumer, message) == "acknowledged"
    await room.flush_deletes()

    assert queue_depth(pipeline, pipeline.queue_url) == 1  # only the real upload's event
    assert room.stats.refused == 1 and room.stats.applied == 0
    assert not (room.mirror.config.directory / "x.txt").exists()


async def test_a_drain_past_its_deadline_hands_the_message_back_at_once(
    room: Room, s3: Any, sqs: Any, pipeline: Pipeline
) -> None:
    s3.put_object(Bucket=pipeline.bucket, Key="in/b1/file.txt", Body=b"f")
    s3.put_object(Bucket=pipeline.bucket, Key="in/b1/_READY", Body=b"")
    stop = StopSignal()
    poll = asyncio.create_task(room.dispatcher.poll(room.consumer, stop))
    batch_dir = Path(room.config.triggers[0].directory) / "b1"
    # The command (sleep 30) is about to run once the batch's file is in place.
    await eventually(lambda: (batch_dir / "file.txt").exists() and room.dispatcher.in_flight)

    stop.request_exit()
    assert await poll == "stopped"
    assert await room.dispatcher.drain(0.1, stop.force) >= 1
    await room.flush_deletes()

    # Every message is back and visible at once: the marker's among them.
    wait_until(lambda: visible_messages(pipeline, sqs) >= 1, what="the message back")
    assert room.dispatcher.in_flight == 0


# -- Mirror.apply -----------------------------------------------------------------------


def change(
    pipeline: Pipeline,
    kind: ChangeKind,
    key: str,
    sequencer: str | None = None,
    etag: str | None = None,
) -> ObjectChange:
    name = "ObjectCreated:Put" if kind == "created" else "ObjectRemoved:Delete"
    return ObjectChange(
        kind,
        name,
        pipeline.bucket,
        key,
        "2026-11-30T10:00:00.000Z",
        etag=etag,
        sequencer=sequencer,
    )


def put(s3: Any, pipeline: Pipeline, key: str, body: bytes) -> str:
    """Upload; return the ETag S3 gave the object (as an event would carry it)."""
    return str(s3.put_object(Bucket=pipeline.bucket, Key=key, Body=body)["ETag"]).strip('"')


async def test_mirror_apply_downloads_skips_unchanged_and_deletes(
    room: Room, s3: Any, pipeline: Pipeline
) -> None:
    target = room.mirror.config.directory / "one.txt"
    s3.put_object(Bucket=pipeline.bucket, Key="data/one.txt", Body=b"first")

    assert await room.mirror.apply(change(pipeline, "created", "data/one.txt")) == Applied(
        "downloaded", 5
    )
    assert target.read_bytes() == b"first"
    # A duplicate costs a conditional GET: 304, the file untouched.
    assert (await room.mirror.apply(change(pipeline, "created", "data/one.txt"))).outcome == (
        "unchanged"
    )
    # A remove event is believed only once S3 agrees: the file stays.
    assert (await room.mirror.apply(change(pipeline, "removed", "data/one.txt"))).outcome == (
        "unchanged"
    )
    assert target.read_bytes() == b"first"
    s3.delete_object(Bucket=pipeline.bucket, Key="data/one.txt")
    assert (await room.mirror.apply(change(pipeline, "removed", "data/one.txt"))).outcome == (
        "deleted"
    )
    assert not target.exists()
    assert (await room.mirror.apply(change(pipeline, "removed", "data/one.txt"))).outcome == (
        "absent"
    )


async def test_mirror_apply_refuses_a_key_through_a_symlink(
    room: Room, s3: Any, pipeline: Pipeline, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (room.mirror.config.directory / "link").symlink_to(outside)
    s3.put_object(Bucket=pipeline.bucket, Key="data/link/evil.txt", Body=b"evil")

    applied = await room.mirror.apply(change(pipeline, "created", "data/link/evil.txt"))

    assert applied.outcome == "refused"
    assert list(outside.iterdir()) == []


# -- the sequencer: a hint that may save work, never lose it ----------------------------

OLDER, NEWER = "0055AED6DCD90281E5", "0055AED6DCD90281E9"


async def test_an_equal_sequencer_falls_through_to_s3(
    room: Room, s3: Any, pipeline: Pipeline
) -> None:
    # LocalStack puts one fixed sequencer on every event: a same-size overwrite must land.
    target = room.mirror.config.directory / "same.txt"
    first = put(s3, pipeline, "data/same.txt", b"version-1")
    await room.mirror.apply(change(pipeline, "created", "data/same.txt", NEWER, first))
    second = put(s3, pipeline, "data/same.txt", b"version-2")

    applied = await room.mirror.apply(change(pipeline, "created", "data/same.txt", NEWER, second))

    assert applied.outcome == "downloaded"
    assert target.read_bytes() == b"version-2"


@pytest.mark.parametrize("forged", ["F", "FFFFFFFFFFFFFFFFFF"])
async def test_one_forged_sequencer_cannot_freeze_a_key(
    room: Room, s3: Any, pipeline: Pipeline, forged: str
) -> None:
    # A claim S3 cannot confirm (no ETag, or an implausible sequencer) sets no bar.
    target = room.mirror.config.directory / "k.txt"
    put(s3, pipeline, "data/k.txt", b"one")
    await room.mirror.apply(change(pipeline, "created", "data/k.txt", forged))
    two = put(s3, pipeline, "data/k.txt", b"two")

    applied = await room.mirror.apply(change(pipeline, "created", "data/k.txt", OLDER, two))

    assert applied.outcome == "downloaded"
    assert target.read_bytes() == b"two"


async def test_an_event_older_than_one_s3_confirmed_is_skipped_until_a_reconcile(
    room: Room, s3: Any, pipeline: Pipeline
) -> None:
    target = room.mirror.config.directory / "seq.txt"
    etag = put(s3, pipeline, "data/seq.txt", b"current")
    await room.mirror.apply(change(pipeline, "created", "data/seq.txt", NEWER, etag))
    # An older delete, arriving late: skipped without a request; the file stays.
    stale = await room.mirror.apply(change(pipeline, "removed", "data/seq.txt", OLDER))
    assert stale.outcome == "stale" and target.read_bytes() == b"current"

    # A reconcile resets what the ledger believes: after it, the same old sequencer on a
    # real delete is no longer stale, and S3 decides.
    await execute(room.mirror, await plan(room.mirror), concurrency=2)
    s3.delete_object(Bucket=pipeline.bucket, Key="data/seq.txt")
    applied = await room.mirror.apply(change(pipeline, "removed", "data/seq.txt", OLDER))

    assert applied.outcome == "deleted"
    assert not target.exists()


# -- the inbox --------------------------------------------------------------------------


async def test_inbox_release_hands_a_message_back_at_once_and_ack_deletes_it(
    room: Room, sqs: Any, pipeline: Pipeline
) -> None:
    sqs.send_message(QueueUrl=pipeline.queue_url, MessageBody="hello")
    first = await room.receive_one()
    assert visible_messages(pipeline, sqs) == 0

    await room.inbox.release(first)
    again = await room.receive_one()
    assert again.message_id == first.message_id
    assert again.receive_count == 2

    room.inbox.ack(again)
    await room.flush_deletes()
    assert queue_depth(pipeline, pipeline.queue_url) == 0


# -- the download path ------------------------------------------------------------------


async def test_download_is_conditional_and_says_when_the_object_is_gone(
    room: Room, s3: Any, pipeline: Pipeline, tmp_path: Path
) -> None:
    root = tmp_path / "dl"
    root.mkdir()
    s3.put_object(Bucket=pipeline.bucket, Key="k/file.bin", Body=b"x" * 1000)

    result = await download(room.clients.s3, pipeline.bucket, "k/file.bin", root, ("file.bin",))
    assert isinstance(result, Downloaded) and result.size == 1000
    assert (root / "file.bin").read_bytes() == b"x" * 1000
    assert [p.name for p in root.iterdir()] == ["file.bin"]  # no temporary file left

    again = await download(
        room.clients.s3, pipeline.bucket, "k/file.bin", root, ("file.bin",), result.etag
    )
    assert again == NOT_MODIFIED

    s3.delete_object(Bucket=pipeline.bucket, Key="k/file.bin")
    assert await download(room.clients.s3, pipeline.bucket, "k/file.bin", root, ("x",)) == GONE

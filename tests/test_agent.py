"""The daemon end to end: moto server on loopback, real S3 -> SNS -> SQS notifications,
``s3pull run`` as a child process, real files, real signals."""

from __future__ import annotations

import json
import os
import signal
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import Agent, queue_depth, receive_bodies, render_config, wait_until
from s3pull.emulator import Pipeline, create_pipeline
from s3pull.paths import TEMP_PREFIX


@pytest.fixture
def mirror_dir(tmp_path: Path) -> Path:
    return tmp_path / "mirror"


@pytest.fixture
def config_path(tmp_path: Path, pipeline: Pipeline, mirror_dir: Path) -> Path:
    path = tmp_path / "s3pull.toml"
    mirror = {"name": "data", "bucket": pipeline.bucket, "prefix": "data/", "directory": mirror_dir}
    path.write_text(render_config(pipeline, tmp_path / "state", [mirror]))
    return path


def files_under(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and not path.is_symlink()
    }


def s3_event(
    pipeline: Pipeline,
    event_name: str,
    key: str,
    sequencer: str | None = None,
    size: int | None = None,
    etag: str | None = None,
) -> str:
    """A notification body in the shape real S3 sends (raw delivery)."""
    obj: dict[str, Any] = {"key": key}
    if size is not None:
        obj.update(size=size, eTag=etag or "0" * 32)
    if sequencer is not None:
        obj["sequencer"] = sequencer
    return json.dumps(
        {
            "Records": [
                {
                    "eventVersion": "2.1",
                    "eventSource": "aws:s3",
                    "awsRegion": "us-east-1",
                    "eventTime": "2026-11-30T10:00:00.000Z",
                    "eventName": event_name,
                    "s3": {
                        "s3SchemaVersion": "1.0",
                        "bucket": {"name": pipeline.bucket},
                        "object": obj,
                    },
                }
            ]
        }
    )


def test_bootstrap_syncs_existing_objects_and_removes_leftovers(
    s3: Any,
    pipeline: Pipeline,
    config_path: Path,
    mirror_dir: Path,
    start_agent: Callable[[Path], Agent],
) -> None:
    s3.put_object(Bucket=pipeline.bucket, Key="data/one.txt", Body=b"one")
    s3.put_object(Bucket=pipeline.bucket, Key="data/deep/two.txt", Body=b"two")
    s3.put_object(Bucket=pipeline.bucket, Key="other/not-mirrored.txt", Body=b"no")
    s3.put_object(Bucket=pipeline.bucket, Key="data/folder/", Body=b"")
    (mirror_dir / "gone").mkdir(parents=True)
    (mirror_dir / "gone" / "stale.txt").write_text("not in S3")
    (mirror_dir / f"{TEMP_PREFIX}crashed").write_text("partial")

    agent = start_agent(config_path)
    agent.wait_ready()

    assert files_under(mirror_dir) == {"one.txt": b"one", "deep/two.txt": b"two"}
    assert not (mirror_dir / "gone").exists()
    assert "removed 1 temporary file(s)" in agent.log
    assert agent.stop() == 0


def test_create_same_size_overwrite_and_delete_through_notifications(
    s3: Any,
    pipeline: Pipeline,
    config_path: Path,
    mirror_dir: Path,
    start_agent: Callable[[Path], Agent],
) -> None:
    agent = start_agent(config_path)
    agent.wait_ready()

    key = "data/reports/q3 summary+ü.csv"
    s3.put_object(Bucket=pipeline.bucket, Key=key, Body=b"version-1")
    target = mirror_dir / "reports" / "q3 summary+ü.csv"
    wait_until(lambda: target.exists() and target.read_bytes() == b"version-1", what="create")

    # Same size, different bytes: a size+mtime tool would miss this.
    s3.put_object(Bucket=pipeline.bucket, Key=key, Body=b"version-2")
    wait_until(lambda: target.read_bytes() == b"version-2", what="same-size overwrite")
    modified = s3.head_object(Bucket=pipeline.bucket, Key=key)["LastModified"]
    assert target.stat().st_mtime == int(modified.timestamp())

    s3.delete_object(Bucket=pipeline.bucket, Key=key)
    # The file goes first, then the directory it emptied: wait for both, or the check
    # can land between the unlink and the rmdir (seen once in a fresh-clone run).
    wait_until(
        lambda: not target.exists() and not (mirror_dir / "reports").exists(),
        what="delete, and the emptied directory pruned",
    )
    assert not list(mirror_dir.rglob(f"{TEMP_PREFIX}*"))
    # Every applied message was deleted from the queue; nothing reached the dead letters.
    wait_until(lambda: queue_depth(pipeline, pipeline.queue_url) == 0, what="queue drained")
    assert queue_depth(pipeline, pipeline.dead_letter_url) == 0
    assert agent.stop() == 0


def test_sns_wrapped_bodies_work_too(
    moto_endpoint: str,
    s3: Any,
    tmp_path: Path,
    start_agent: Callable[[Path], Agent],
) -> None:
    wrapped = create_pipeline(
        moto_endpoint, f"wrapped-{os.getpid()}-{id(tmp_path)}", raw_delivery=False
    )
    config = tmp_path / "wrapped.toml"
    config.write_text(
        render_config(
            wrapped,
            tmp_path / "state",
            [{"name": "all", "bucket": wrapped.bucket, "prefix": "", "directory": tmp_path / "m"}],
        )
    )
    agent = start_agent(config)
    agent.wait_ready()
    s3.put_object(Bucket=wrapped.bucket, Key="x/y.txt", Body=b"wrapped")
    wait_until(lambda: (tmp_path / "m" / "x" / "y.txt").exists(), what="wrapped create")
    agent.wait_for_log("s3:TestEvent acknowledged")
    assert agent.stop() == 0


def test_events_are_hints_s3_is_the_truth(
    s3: Any,
    sqs: Any,
    pipeline: Pipeline,
    config_path: Path,
    mirror_dir: Path,
    start_agent: Callable[[Path], Agent],
) -> None:
    s3.put_object(Bucket=pipeline.bucket, Key="data/kept.txt", Body=b"still here")
    agent = start_agent(config_path)
    agent.wait_ready()
    kept = mirror_dir / "kept.txt"
    assert kept.read_bytes() == b"still here"

    # A remove for an object that still exists (reordered or forged) deletes nothing.
    sqs.send_message(
        QueueUrl=pipeline.queue_url,
        MessageBody=s3_event(pipeline, "ObjectRemoved:Delete", "data/kept.txt"),
    )
    # A create for an object that does not exist resurrects nothing.
    sqs.send_message(
        QueueUrl=pipeline.queue_url,
        MessageBody=s3_event(pipeline, "ObjectCreated:Put", "data/ghost.txt", size=5),
    )
    agent.wait_for_log("data/kept.txt (ObjectRemoved:Delete")
    agent.wait_for_log("data/ghost.txt (ObjectCreated:Put")
    assert kept.read_bytes() == b"still here"
    assert not (mirror_dir / "ghost.txt").exists()

    # Duplicates cost a conditional GET and change nothing.
    for _ in range(3):
        sqs.send_message(
            QueueUrl=pipeline.queue_url,
            MessageBody=s3_event(pipeline, "ObjectCreated:Put", "data/kept.txt", size=10),
        )
    agent.wait_for_log("unchanged data/kept.txt", count=3)
    wait_until(lambda: queue_depth(pipeline, pipeline.queue_url) == 0, what="queue drained")
    assert agent.stop() == 0


def test_sequencer_skips_stale_events(
    s3: Any,
    sqs: Any,
    pipeline: Pipeline,
    config_path: Path,
    mirror_dir: Path,
    start_agent: Callable[[Path], Agent],
) -> None:
    agent = start_agent(config_path)
    agent.wait_ready()
    put = s3.put_object(Bucket=pipeline.bucket, Key="data/seq.txt", Body=b"current")
    # The event names the version S3 then serves: S3 confirms it, so its sequencer counts.
    created = s3_event(
        pipeline,
        "ObjectCreated:Put",
        "data/seq.txt",
        sequencer="0055AED6DCD90281E9",
        size=7,
        etag=put["ETag"].strip('"'),
    )
    sqs.send_message(QueueUrl=pipeline.queue_url, MessageBody=created)
    agent.wait_for_log("downloaded data/seq.txt")
    agent.wait_for_log("data/seq.txt (ObjectCreated:Put", count=2)

    # The object is deleted, but the event saying so is older than the one applied:
    # it is skipped as stale (S3 would send a newer sequencer for a real later delete).
    s3.delete_object(Bucket=pipeline.bucket, Key="data/seq.txt")
    stale = s3_event(
        pipeline, "ObjectRemoved:Delete", "data/seq.txt", sequencer="0055AED6DCD90281E5"
    )
    before = agent.log.count("stale data/seq.txt")
    sqs.send_message(QueueUrl=pipeline.queue_url, MessageBody=stale)
    agent.wait_for_log("stale data/seq.txt", count=before + 1)
    newer = s3_event(
        pipeline, "ObjectRemoved:Delete", "data/seq.txt", sequencer="0055AED6DCD90281EA"
    )
    sqs.send_message(QueueUrl=pipeline.queue_url, MessageBody=newer)
    wait_until(lambda: not (mirror_dir / "seq.txt").exists(), what="newer delete applied")
    assert agent.stop() == 0


def test_hostile_keys_are_refused_and_good_keys_still_sync(
    s3: Any,
    sqs: Any,
    pipeline: Pipeline,
    config_path: Path,
    mirror_dir: Path,
    tmp_path: Path,
    start_agent: Callable[[Path], Agent],
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    mirror_dir.mkdir()
    (mirror_dir / "link").symlink_to(outside, target_is_directory=True)
    agent = start_agent(config_path)
    agent.wait_ready()

    hostile = [
        "data/../escape.txt",
        "data/../../escape.txt",
        "data//etc/passwd",
        "data/a/./b.txt",
        "data/" + "n" * 256,
        f"data/{TEMP_PREFIX}planted",
        "data/link/evil.txt",
    ]
    for key in hostile:
        if key != "data/link/evil.txt":
            # Keys S3 would store verbatim but a disk cannot hold safely: forged events.
            sqs.send_message(
                QueueUrl=pipeline.queue_url,
                MessageBody=s3_event(pipeline, "ObjectCreated:Put", key, size=4),
            )
    s3.put_object(Bucket=pipeline.bucket, Key="data/link/evil.txt", Body=b"evil")
    s3.put_object(Bucket=pipeline.bucket, Key="data/good.txt", Body=b"good")
    wait_until(lambda: (mirror_dir / "good.txt").exists(), what="good key after hostile ones")
    for key in hostile:
        agent.wait_for_log(f"refused key {key!r}")
    assert list(outside.iterdir()) == []
    assert not (tmp_path / "escape.txt").exists()
    assert sorted(p.name for p in mirror_dir.iterdir()) == ["good.txt", "link"]
    # Refusals are final: retrying cannot help, so the messages are deleted.
    wait_until(lambda: queue_depth(pipeline, pipeline.queue_url) == 0, what="queue drained")
    assert agent.stop() == 0


def test_file_and_directory_collision_keeps_the_first_and_loses_nothing(
    s3: Any,
    pipeline: Pipeline,
    config_path: Path,
    mirror_dir: Path,
    start_agent: Callable[[Path], Agent],
) -> None:
    agent = start_agent(config_path)
    agent.wait_ready()
    s3.put_object(Bucket=pipeline.bucket, Key="data/a", Body=b"file a")
    wait_until(lambda: (mirror_dir / "a").is_file(), what="file a")
    s3.put_object(Bucket=pipeline.bucket, Key="data/a/b", Body=b"file a/b")
    agent.wait_for_log("refused key 'data/a/b'")
    assert (mirror_dir / "a").read_bytes() == b"file a"
    # Both objects stay in S3: the refusal only concerns the disk.
    assert {o["Key"] for o in s3.list_objects_v2(Bucket=pipeline.bucket)["Contents"]} == {
        "data/a",
        "data/a/b",
    }
    assert agent.stop() == 0


def test_unparseable_bodies_go_to_the_dead_letter_queue(
    s3: Any,
    sqs: Any,
    pipeline: Pipeline,
    config_path: Path,
    mirror_dir: Path,
    start_agent: Callable[[Path], Agent],
) -> None:
    agent = start_agent(config_path)
    agent.wait_ready()
    bodies = ["not json at all", '{"Records": [{"eventName": 5}]}', '{"Records": "x"}']
    for body in bodies:
        sqs.send_message(QueueUrl=pipeline.queue_url, MessageBody=body)
    s3.put_object(Bucket=pipeline.bucket, Key="data/after.txt", Body=b"fine")
    wait_until(lambda: (mirror_dir / "after.txt").exists(), what="agent keeps working")

    # max_receive_count is 2 in the test pipeline: after two failed receives SQS moves
    # each body, untouched, to the dead-letter queue.
    dead: list[str] = []

    def all_dead_lettered() -> bool:
        dead.extend(receive_bodies(sqs, pipeline.dead_letter_url))
        return sorted(dead) == sorted(bodies)

    wait_until(all_dead_lettered, timeout=60, what="bodies in the dead-letter queue")
    assert "cannot be parsed, leaving it for the dead-letter queue" in agent.log
    assert agent.process.poll() is None
    assert agent.stop() == 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_an_idle_agent_with_exit_0(
    config_path: Path,
    start_agent: Callable[[Path], Agent],
    signum: int,
) -> None:
    agent = start_agent(config_path)
    agent.wait_ready()
    assert agent.stop(signum, timeout=10) == 0
    assert f"received {signal.Signals(signum).name}, stopping" in agent.log


def test_agent_waits_for_an_unreachable_endpoint_instead_of_exiting(
    tmp_path: Path,
    pipeline: Pipeline,
    start_agent: Callable[[Path], Agent],
) -> None:
    config = tmp_path / "down.toml"
    down = Pipeline(
        "http://127.0.0.1:9",
        pipeline.bucket,
        pipeline.topic_arn,
        "http://127.0.0.1:9/123456789012/nowhere",
        pipeline.dead_letter_url,
    )
    config.write_text(
        render_config(
            down,
            tmp_path / "state",
            [{"name": "m", "bucket": pipeline.bucket, "prefix": "", "directory": tmp_path / "m"}],
        )
    )
    agent = start_agent(config)
    # botocore spends its own retries first (about 20 s of connection attempts).
    agent.wait_for_log("checking the queue failed, retrying in", timeout=90)
    assert agent.process.poll() is None
    assert agent.stop(timeout=10) == 0


def test_a_change_that_fails_is_not_deleted_and_ends_in_the_dead_letter_queue(
    s3: Any,
    sqs: Any,
    pipeline: Pipeline,
    tmp_path: Path,
    start_agent: Callable[[Path], Agent],
) -> None:
    # A mirror of a bucket that does not exist: every GET fails with NoSuchBucket, a
    # real error that retrying cannot fix, so the redrive policy must end it.
    config = tmp_path / "failing.toml"
    config.write_text(
        render_config(
            pipeline,
            tmp_path / "state",
            [
                {
                    "name": "data",
                    "bucket": pipeline.bucket,
                    "prefix": "data/",
                    "directory": tmp_path / "mirror",
                },
                {
                    "name": "broken",
                    "bucket": "no-such-bucket-here",
                    "prefix": "",
                    "directory": tmp_path / "broken",
                },
            ],
        )
    )
    agent = start_agent(config)
    agent.wait_for_log("broken: could not be reconciled at start-up")
    agent.wait_ready()  # the broken mirror does not hold the others hostage

    body = s3_event(pipeline, "ObjectCreated:Put", "x.txt", size=1).replace(
        pipeline.bucket, "no-such-bucket-here"
    )
    sqs.send_message(QueueUrl=pipeline.queue_url, MessageBody=body)
    s3.put_object(Bucket=pipeline.bucket, Key="data/fine.txt", Body=b"fine")
    wait_until(lambda: (tmp_path / "mirror" / "fine.txt").exists(), what="healthy mirror")

    agent.wait_for_log("broken: could not apply ObjectCreated:Put to x.txt, will retry")

    # max_receive_count is 2: after the second failed receive SQS dead-letters it.
    dead_lettered = wait_until(
        lambda: receive_bodies(sqs, pipeline.dead_letter_url),
        timeout=60,
        what="the dead-letter queue",
    )
    assert dead_lettered == [body]
    assert agent.log.count("broken: could not apply ObjectCreated:Put to x.txt") >= 2
    assert agent.stop() == 0


@pytest.mark.parametrize(
    ("first", "then_delete", "then_put"),
    [
        ("a/b", "a/b", "a"),  # a directory left by an applied event stands in a file's way
        ("a", "a", "a/b"),  # a file left by an applied event stands in a directory's way
    ],
)
def test_reordered_file_and_directory_events_end_equal_to_s3(
    s3: Any,
    sqs: Any,
    pipeline: Pipeline,
    tmp_path: Path,
    start_agent: Callable[[Path], Agent],
    first: str,
    then_delete: str,
    then_put: str,
) -> None:
    # A bucket without notifications: every event is delivered by hand, in the order
    # put(first), put(then_put), delete(then_delete) although S3 saw the delete first.
    quiet = f"quiet-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=quiet)
    config = tmp_path / "quiet.toml"
    mirror_dir = tmp_path / "quiet-mirror"
    config.write_text(
        render_config(
            pipeline,
            tmp_path / "state",
            [{"name": "q", "bucket": quiet, "prefix": "", "directory": mirror_dir}],
        )
    )
    agent = start_agent(config)
    agent.wait_ready()

    def deliver(event_name: str, key: str) -> None:
        body = s3_event(pipeline, event_name, key, size=1).replace(pipeline.bucket, quiet)
        sqs.send_message(QueueUrl=pipeline.queue_url, MessageBody=body)
        agent.wait_for_log(f"{key} ({event_name}")

    s3.put_object(Bucket=quiet, Key=first, Body=b"first")
    deliver("ObjectCreated:Put", first)
    assert files_under(mirror_dir) == {first: b"first"}

    s3.delete_object(Bucket=quiet, Key=then_delete)
    s3.put_object(Bucket=quiet, Key=then_put, Body=b"survivor")
    deliver("ObjectCreated:Put", then_put)
    deliver("ObjectRemoved:Delete", then_delete)

    assert files_under(mirror_dir) == {then_put: b"survivor"}
    assert f"deleted {first} (no longer in S3, in the way of {then_put})" in agent.log
    wait_until(lambda: queue_depth(pipeline, pipeline.queue_url) == 0, what="queue drained")
    assert agent.stop() == 0

"""`[[mirror]] archived`: GLACIER / DEEP_ARCHIVE objects not restored, against the moto
server with the real S3 -> SNS -> SQS path and the agent as a child process.

moto 5.2.5 refuses GetObject on such an object with InvalidObjectState (403) as S3 does.
RestoreObject starts a restore (ObjectRestore:Post); the next read of the object (a HEAD)
finishes it and sends s3:ObjectRestore:Completed, in moto's notification shape. The same
event in AWS's shapes (tests/events/aws-object-restore-completed.json and the EventBridge
one, which moto cannot send to SNS) is sent to the queue by the test.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import pytest

from conftest import Agent, queue_depth, render_config, wait_until
from conftest import run_s3pull as s3pull
from s3pull.emulator import Pipeline, create_pipeline

EVENTS = Path(__file__).parent / "events"


@pytest.fixture
def patient(moto_endpoint: str) -> Pipeline:
    # Enough receives that a message that kept failing would still be in the queue, not
    # dead-lettered, when the test looks: so "acknowledged" is what the test sees.
    return create_pipeline(moto_endpoint, f"t-{uuid.uuid4().hex[:16]}", max_receive_count=50)


def write_config(tmp_path: Path, pipeline: Pipeline, archived: str | None) -> Path:
    config = tmp_path / "s3pull.toml"
    mirror = {
        "name": "data",
        "bucket": pipeline.bucket,
        "prefix": "data/",
        "directory": tmp_path / "mirror",
        "archived": archived,
    }
    config.write_text(render_config(pipeline, tmp_path / "state", [mirror]))
    return config


def status_json(config: Path) -> dict[str, Any]:
    result = s3pull("status", "--json", "--config", str(config))
    return dict(json.loads(result.stdout))


def dead_letters(pipeline: Pipeline) -> int:
    return queue_depth(pipeline, pipeline.dead_letter_url)


def restore_completed_notification(pipeline: Pipeline, key: str) -> str:
    """AWS's ObjectRestore:Completed record (raw delivery), for this bucket and key."""
    body = json.loads((EVENTS / "aws-object-restore-completed.json").read_text())
    record = body["Records"][0]
    record["s3"]["bucket"]["name"] = pipeline.bucket
    record["s3"]["bucket"]["arn"] = f"arn:aws:s3:::{pipeline.bucket}"
    record["s3"]["object"]["key"] = quote_plus(key, safe="/")  # as S3 encodes it
    return json.dumps(body)


def restore_completed_eventbridge(pipeline: Pipeline, key: str) -> str:
    """AWS's EventBridge "Object Restore Completed", for this bucket and key (as is)."""
    event = json.loads((EVENTS / "aws-eventbridge-object-restore-completed.json").read_text())
    event["resources"] = [f"arn:aws:s3:::{pipeline.bucket}"]
    event["detail"]["bucket"]["name"] = pipeline.bucket
    event["detail"]["object"]["key"] = key
    return json.dumps(event)


def test_skip_logs_once_counts_and_never_dead_letters(
    tmp_path: Path, patient: Pipeline, s3: Any, start_agent: Callable[..., Agent]
) -> None:
    pipeline = patient
    config = write_config(tmp_path, pipeline, None)  # "skip" is the default
    agent = start_agent(config)
    agent.wait_ready()
    s3.put_object(Bucket=pipeline.bucket, Key="data/cold.bin", Body=b"cold", StorageClass="GLACIER")
    s3.put_object(Bucket=pipeline.bucket, Key="data/warm.txt", Body=b"warm")
    agent.wait_for_log("data: downloaded data/warm.txt")
    agent.wait_for_log("data: archived data/cold.bin")
    # The same object overwritten, still archived: counted again, not logged again.
    s3.put_object(
        Bucket=pipeline.bucket, Key="data/cold.bin", Body=b"colder", StorageClass="DEEP_ARCHIVE"
    )
    wait_until(lambda: queue_depth(pipeline, pipeline.queue_url) == 0, what="the queue to drain")
    wait_until(
        lambda: status_json(config)["daemon"]["archived"].get("data", {}).get("skipped") == 1,
        what="status to count the archived key",
    )
    assert agent.log.count("archived data/cold.bin") == 1
    assert 'skipped (archived = "skip"' in agent.log
    assert not (tmp_path / "mirror" / "cold.bin").exists()
    assert (tmp_path / "mirror" / "warm.txt").read_bytes() == b"warm"
    assert dead_letters(pipeline) == 0
    human = s3pull("status", "--config", str(config))
    assert human.returncode == 0, human.stdout  # deliberate, not a failure: IN SYNC
    assert "archived      data: 1 skipped, 0 restoring" in human.stdout
    assert agent.stop() == 0


def test_a_reconcile_skips_archived_objects_by_the_listing_and_keeps_local_copies(
    tmp_path: Path, pipeline: Pipeline, s3: Any
) -> None:
    config = write_config(tmp_path, pipeline, "skip")
    s3.put_object(Bucket=pipeline.bucket, Key="data/cold.bin", Body=b"cold", StorageClass="GLACIER")
    s3.put_object(Bucket=pipeline.bucket, Key="data/kept.bin", Body=b"k", StorageClass="GLACIER")
    s3.put_object(Bucket=pipeline.bucket, Key="data/warm.txt", Body=b"warm")
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror" / "kept.bin").write_bytes(b"from before it was archived")

    plan = s3pull("sync", "--dry-run", "--config", str(config))
    assert plan.returncode == 0, plan.stderr
    assert "data: skip data/cold.bin (archived: GLACIER)" in plan.stdout
    assert "data: 1 to download (4 B), 0 to delete" in plan.stdout

    result = s3pull("sync", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "data: archived data/cold.bin (reconcile)" in result.stderr
    assert (tmp_path / "mirror" / "warm.txt").read_bytes() == b"warm"
    assert not (tmp_path / "mirror" / "cold.bin").exists()
    # S3 still holds it: a local copy is never deleted for being archived.
    assert (tmp_path / "mirror" / "kept.bin").read_bytes() == b"from before it was archived"


def test_restore_asks_s3_then_fetches_on_moto_s_own_restore_completed(
    tmp_path: Path, patient: Pipeline, s3: Any, start_agent: Callable[..., Agent]
) -> None:
    pipeline = patient
    key = "data/cold q4+été.bin"
    config = write_config(tmp_path, pipeline, "restore")
    agent = start_agent(config)
    agent.wait_ready()
    s3.put_object(Bucket=pipeline.bucket, Key=key, Body=b"cold", StorageClass="GLACIER")
    agent.wait_for_log(f"data: restoring {key}")
    assert "restore requested (Standard, 7 days)" in agent.log
    wait_until(
        lambda: status_json(config)["daemon"]["archived"].get("data", {}).get("restoring") == 1,
        what="status to count the key being restored",
    )
    assert not (tmp_path / "mirror" / "cold q4+été.bin").exists()
    # An operator looks at the restore the agent asked for; moto finishes a restore on the
    # next read of the object, and then sends s3:ObjectRestore:Completed to the topic.
    assert "expiry-date" in s3.head_object(Bucket=pipeline.bucket, Key=key)["Restore"]
    agent.wait_for_log(f"data: downloaded {key} (ObjectRestore:Completed")
    assert (tmp_path / "mirror" / "cold q4+été.bin").read_bytes() == b"cold"
    wait_until(
        lambda: "data" not in status_json(config)["daemon"]["archived"],
        what="status to forget the key once fetched",
    )
    assert dead_letters(pipeline) == 0
    assert agent.stop() == 0


@pytest.mark.parametrize(
    "completed", [restore_completed_notification, restore_completed_eventbridge]
)
def test_restore_completed_in_aws_shapes_fetches_the_object(
    tmp_path: Path,
    patient: Pipeline,
    s3: Any,
    sqs: Any,
    start_agent: Callable[..., Agent],
    completed: Callable[[Pipeline, str], str],
) -> None:
    pipeline = patient
    # Only AWS's own bodies may bring the object: moto's Completed event is switched off.
    s3.put_bucket_notification_configuration(
        Bucket=pipeline.bucket,
        NotificationConfiguration={
            "TopicConfigurations": [
                {"TopicArn": pipeline.topic_arn, "Events": ["s3:ObjectCreated:*"]}
            ]
        },
    )
    key = "data/cold q4+été.bin"
    config = write_config(tmp_path, pipeline, "restore")
    agent = start_agent(config)
    agent.wait_ready()
    s3.put_object(Bucket=pipeline.bucket, Key=key, Body=b"cold", StorageClass="GLACIER")
    agent.wait_for_log(f"data: restoring {key}")
    wait_until(lambda: queue_depth(pipeline, pipeline.queue_url) == 0, what="the ack")

    sqs.send_message(QueueUrl=pipeline.queue_url, MessageBody=completed(pipeline, key))
    agent.wait_for_log(f"data: downloaded {key} (ObjectRestore:Completed")
    assert (tmp_path / "mirror" / "cold q4+été.bin").read_bytes() == b"cold"
    assert dead_letters(pipeline) == 0
    assert agent.stop() == 0


def test_archived_must_be_skip_or_restore(tmp_path: Path, pipeline: Pipeline) -> None:
    config = write_config(tmp_path, pipeline, "thaw")
    result: subprocess.CompletedProcess[str] = s3pull("check", "--config", str(config))
    assert result.returncode == 78
    assert f'{config}: mirror[0].archived: must be "skip" or "restore", got \'thaw\'' in (
        result.stderr
    )


def test_a_reconcile_with_restore_asks_then_downloads_once_restored(
    tmp_path: Path, pipeline: Pipeline, s3: Any
) -> None:
    config = write_config(tmp_path, pipeline, "restore")
    s3.put_object(Bucket=pipeline.bucket, Key="data/cold.bin", Body=b"cold", StorageClass="GLACIER")

    first = s3pull("sync", "--config", str(config))
    assert first.returncode == 0, first.stderr
    assert "data: restoring data/cold.bin (reconcile)" in first.stderr
    assert "0 downloaded" in first.stderr
    assert not (tmp_path / "mirror" / "cold.bin").exists()

    # moto finishes the restore on the next read of the object.
    assert "expiry-date" in s3.head_object(Bucket=pipeline.bucket, Key="data/cold.bin")["Restore"]
    second = s3pull("sync", "--config", str(config))
    assert second.returncode == 0, second.stderr
    assert (tmp_path / "mirror" / "cold.bin").read_bytes() == b"cold"


def test_a_batch_with_an_archived_file_never_runs_its_command(
    tmp_path: Path, patient: Pipeline, s3: Any, start_agent: Callable[..., Agent]
) -> None:
    # A mirror may skip what it cannot read; a trigger must not run the business process
    # on a batch with a file missing (and then record the marker as done).
    pipeline = patient
    ran = tmp_path / "ran.jsonl"
    record_batch = Path(__file__).parent / "commands" / "record_batch.py"
    trigger = {
        "name": "orders",
        "bucket": pipeline.bucket,
        "prefix": "incoming/",
        "marker": "_READY",
        "directory": tmp_path / "batches",
        "command": [sys.executable, str(record_batch), str(ran)],
    }
    config = tmp_path / "s3pull.toml"
    config.write_text(render_config(pipeline, tmp_path / "state", [], [trigger]))
    agent = start_agent(config)
    agent.wait_ready()
    s3.put_object(Bucket=pipeline.bucket, Key="incoming/b1/a.csv", Body=b"a")
    s3.put_object(
        Bucket=pipeline.bucket, Key="incoming/b1/cold.csv", Body=b"c", StorageClass="GLACIER"
    )
    s3.put_object(Bucket=pipeline.bucket, Key="incoming/b1/_READY", Body=b"")
    agent.wait_for_log("1 file(s) are archived in S3")
    wait_until(
        lambda: status_json(config)["daemon"]["failing"].get("trigger:orders"),
        what="status to name the failing batch",
    )
    assert not ran.exists(), "the command ran on a batch with a file missing"
    assert s3pull("status", "--config", str(config)).returncode == 1
    assert agent.stop() == 0

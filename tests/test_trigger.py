"""Batch triggers end to end: moto server, real notifications, real processes."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import Agent, queue_depth, receive_bodies, render_config, wait_until
from s3pull.emulator import Pipeline, client, create_pipeline
from s3pull.trigger import parse_manifest
from test_agent import s3_event

RECORD_BATCH = Path(__file__).parent / "commands" / "record_batch.py"


def runs(output: Path) -> list[dict[str, Any]]:
    if not output.exists():
        return []
    return [json.loads(line) for line in output.read_text().splitlines()]


def trigger_config(
    tmp_path: Path,
    pipeline: Pipeline,
    *behaviour: str,
    name: str = "orders",
    queue: dict[str, Any] | None = None,
    **settings: Any,
) -> tuple[Path, Path]:
    """A config with one trigger running record_batch.py; returns (config, output)."""
    output = tmp_path / f"{name}-runs.jsonl"
    trigger = {
        "name": name,
        "bucket": pipeline.bucket,
        "prefix": "incoming/",
        "marker": "_READY",
        "directory": tmp_path / "batches",
        "command": [sys.executable, str(RECORD_BATCH), str(output), *behaviour],
        **settings,
    }
    config = tmp_path / f"{name}.toml"
    config.write_text(
        render_config(pipeline, tmp_path / f"state-{name}", [], [trigger], queue=queue)
    )
    return config, output


def test_empty_marker_runs_the_command_on_the_listed_batch(
    s3: Any, pipeline: Pipeline, tmp_path: Path, start_agent: Callable[..., Agent]
) -> None:
    config, output = trigger_config(tmp_path, pipeline)
    agent = start_agent(config)
    agent.wait_ready()
    s3.put_object(Bucket=pipeline.bucket, Key="incoming/b1/orders.csv", Body=b"id\n1\n")
    s3.put_object(Bucket=pipeline.bucket, Key="incoming/b1/sub/lines.csv", Body=b"x\n")
    s3.put_object(Bucket=pipeline.bucket, Key="incoming/b1/_READY", Body=b"")

    (run,) = wait_until(lambda: runs(output), what="the command to run")
    batch_dir = tmp_path / "batches" / "b1"
    assert run["cwd"] == str(batch_dir)
    # The batch's files and nothing else of ours: no marker, no temp or metadata files.
    assert run["files"] == ["orders.csv", "sub/lines.csv"]
    assert run["contents"] == {"orders.csv": "id\n1\n", "sub/lines.csv": "x\n"}
    env = run["env"]
    assert env["S3PULL_TRIGGER"] == "orders"
    assert env["S3PULL_BUCKET"] == pipeline.bucket
    assert env["S3PULL_KEY"] == "incoming/b1/_READY"
    assert env["S3PULL_BATCH_PREFIX"] == "incoming/b1/"
    assert env["S3PULL_BATCH_DIR"] == str(batch_dir)
    assert env["S3PULL_EVENT_TIME"].endswith("Z")
    agent.wait_for_log("orders: batch incoming/b1/ succeeded")
    assert "orders incoming/b1/ [stdout] processed 2 file(s)" in agent.log
    assert "orders incoming/b1/ [stderr] a line on stderr" in agent.log
    wait_until(lambda: queue_depth(pipeline, pipeline.queue_url) == 0, what="marker deleted")
    assert agent.stop() == 0
    assert len(runs(output)) == 1


def test_manifest_marker_first_waits_for_every_listed_file(
    s3: Any, pipeline: Pipeline, tmp_path: Path, start_agent: Callable[..., Agent]
) -> None:
    config, output = trigger_config(tmp_path, pipeline, manifest_timeout_seconds=60)
    agent = start_agent(config)
    agent.wait_ready()
    etag_b = "5d41402abc4b2a76b9719d911017c592"  # MD5 of b"hello"
    manifest = f"a.csv\nb file.csv {etag_b}\n"
    # The marker arrives before the data, as unordered notifications allow.
    s3.put_object(Bucket=pipeline.bucket, Key="incoming/m1/_READY", Body=manifest.encode())
    agent.wait_for_log("waiting for 2 file(s) the manifest lists")
    s3.put_object(Bucket=pipeline.bucket, Key="incoming/m1/a.csv", Body=b"a")
    s3.put_object(Bucket=pipeline.bucket, Key="incoming/m1/b file.csv", Body=b"not yet")
    agent.wait_for_log("waiting for 1 file(s) the manifest lists")
    assert runs(output) == []  # b's ETag does not match the manifest yet
    s3.put_object(Bucket=pipeline.bucket, Key="incoming/m1/b file.csv", Body=b"hello")

    (run,) = wait_until(lambda: runs(output), what="the command to run")
    assert run["contents"] == {"a.csv": "a", "b file.csv": "hello"}
    assert agent.stop() == 0


def test_manifest_timeout_fails_retries_then_dead_letters(
    s3: Any, sqs: Any, pipeline: Pipeline, tmp_path: Path, start_agent: Callable[..., Agent]
) -> None:
    config, output = trigger_config(tmp_path, pipeline, manifest_timeout_seconds=1)
    agent = start_agent(config)
    agent.wait_ready()
    s3.put_object(Bucket=pipeline.bucket, Key="incoming/t1/_READY", Body=b"never.csv\n")

    (body,) = wait_until(
        lambda: receive_bodies(sqs, pipeline.dead_letter_url),
        timeout=60,
        what="the marker in the dead-letter queue",
    )
    assert "incoming/t1/_READY" in body or "incoming%2Ft1%2F_READY" in body
    assert agent.log.count("the manifest still waits for 1 file(s): never.csv") == 2
    assert runs(output) == []
    assert agent.stop() == 0


def test_failing_command_is_retried_then_dead_lettered(
    s3: Any, sqs: Any, pipeline: Pipeline, tmp_path: Path, start_agent: Callable[..., Agent]
) -> None:
    config, output = trigger_config(tmp_path, pipeline, "exit", "3")
    agent = start_agent(config)
    agent.wait_ready()
    s3.put_object(Bucket=pipeline.bucket, Key="incoming/f1/data", Body=b"d")
    s3.put_object(Bucket=pipeline.bucket, Key="incoming/f1/_READY", Body=b"")

    wait_until(
        lambda: receive_bodies(sqs, pipeline.dead_letter_url),
        timeout=60,
        what="the marker in the dead-letter queue",
    )
    # max_receive_count = 2: two attempts, each logged with the exit status.
    assert len(runs(output)) == 2
    assert agent.log.count("command exited with status 3") == 2
    assert agent.stop() == 0


def test_redelivered_marker_event_does_not_run_twice(
    s3: Any, sqs: Any, pipeline: Pipeline, tmp_path: Path, start_agent: Callable[..., Agent]
) -> None:
    config, output = trigger_config(tmp_path, pipeline)
    s3.put_object(Bucket=pipeline.bucket, Key="incoming/r1/data", Body=b"d")
    s3.put_object(Bucket=pipeline.bucket, Key="incoming/r1/_READY", Body=b"")
    agent = start_agent(config)
    agent.wait_ready()
    wait_until(lambda: runs(output), what="the first run")
    agent.wait_for_log("batch incoming/r1/ succeeded")

    # The same event delivered again (SQS is at-least-once): same key, time and ETag.
    etag = s3.head_object(Bucket=pipeline.bucket, Key="incoming/r1/_READY")["ETag"].strip('"')
    copy = json.loads(s3_event(pipeline, "ObjectCreated:Put", "incoming/r1/_READY", size=0))
    copy["Records"][0]["s3"]["object"]["eTag"] = etag
    for _ in range(2):
        copy["Records"][0]["eventTime"] = "2026-11-30T10:00:00.000Z"
        sqs.send_message(QueueUrl=pipeline.queue_url, MessageBody=json.dumps(copy))
    agent.wait_for_log("batch incoming/r1/ already-ran")
    wait_until(lambda: queue_depth(pipeline, pipeline.queue_url) == 0, what="queue drained")
    # The first synthetic copy ran (a new event time is a new event), the second did not.
    assert len(runs(output)) == 2
    assert agent.stop() == 0


def test_shell_metacharacters_in_keys_are_never_executed(
    s3: Any, pipeline: Pipeline, tmp_path: Path, start_agent: Callable[..., Agent]
) -> None:
    config, output = trigger_config(tmp_path, pipeline)
    agent = start_agent(config)
    agent.wait_ready()
    canary = tmp_path / "pwned"
    batch = f"incoming/$(touch {canary});`touch {canary}`|x&/"
    name = f"a;touch {canary}; echo $HOME > 'q'.txt"
    s3.put_object(Bucket=pipeline.bucket, Key=batch + name, Body=b"harmless")
    s3.put_object(Bucket=pipeline.bucket, Key=batch + "_READY", Body=b"")

    (run,) = wait_until(lambda: runs(output), what="the command to run")
    assert run["files"] == [name]
    assert run["env"]["S3PULL_BATCH_PREFIX"] == batch
    assert not canary.exists()
    assert agent.stop() == 0


def test_timeout_kills_the_whole_process_group(
    s3: Any, pipeline: Pipeline, tmp_path: Path, start_agent: Callable[..., Agent]
) -> None:
    pidfile = tmp_path / "grandchild.pid"
    config, _output = trigger_config(tmp_path, pipeline, "spawn", str(pidfile), timeout_seconds=2)
    agent = start_agent(config)
    agent.wait_ready()
    s3.put_object(Bucket=pipeline.bucket, Key="incoming/k1/_READY", Body=b"")
    agent.wait_for_log("timed out after 2 s, stopping its process group")
    grandchild = int(wait_until(lambda: pidfile.exists() and pidfile.read_text()))
    agent.wait_for_log("batch incoming/k1/ failed")

    def gone(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        # A zombie awaiting its reaper counts as stopped.
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"

    assert gone(grandchild)
    assert "sent SIGTERM to process group" in agent.log
    assert agent.stop() == 0


def test_heartbeat_keeps_a_long_run_invisible(
    s3: Any, pipeline: Pipeline, tmp_path: Path, start_agent: Callable[..., Agent]
) -> None:
    # visibility_timeout is 2 s in tests; the command takes 6 s. Without the heartbeat
    # the marker would be redelivered mid-run and the batch would run again.
    config, output = trigger_config(tmp_path, pipeline, "sleep", "6")
    agent = start_agent(config)
    agent.wait_ready()
    s3.put_object(Bucket=pipeline.bucket, Key="incoming/h1/_READY", Body=b"")
    agent.wait_for_log("batch incoming/h1/ succeeded", timeout=60)
    wait_until(lambda: queue_depth(pipeline, pipeline.queue_url) == 0, what="marker deleted")
    assert len(runs(output)) == 1
    assert "already-ran" not in agent.log
    assert agent.stop() == 0


def test_shared_queue_runs_each_batch_on_one_server_only(
    moto_endpoint: str,
    s3: Any,
    pipeline: Pipeline,
    tmp_path: Path,
    start_agent: Callable[..., Agent],
) -> None:
    # A shared trigger queue subscribed to the same topic (see README "Run once per fleet").
    shared = create_pipeline(moto_endpoint, f"shared-{uuid.uuid4().hex[:12]}")
    sns = client(moto_endpoint, "sns")
    sqs = client(moto_endpoint, "sqs")
    shared_arn = sqs.get_queue_attributes(QueueUrl=shared.queue_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    sns.subscribe(
        TopicArn=pipeline.topic_arn,
        Protocol="sqs",
        Endpoint=shared_arn,
        Attributes={"RawMessageDelivery": "true"},
    )
    output = tmp_path / "fleet-runs.jsonl"
    agents = []
    for server in ("one", "two"):
        # Each server's own queue is subscribed to the topic too: it sees every marker
        # and must leave it to the shared queue, or both servers would run the batch.
        own = create_pipeline(moto_endpoint, f"own-{server}-{uuid.uuid4().hex[:8]}")
        own_arn = sqs.get_queue_attributes(QueueUrl=own.queue_url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        sns.subscribe(
            TopicArn=pipeline.topic_arn,
            Protocol="sqs",
            Endpoint=own_arn,
            Attributes={"RawMessageDelivery": "true"},
        )
        trigger = {
            "name": "orders",
            "bucket": pipeline.bucket,
            "prefix": "incoming/",
            "marker": "_READY",
            "directory": tmp_path / server / "batches",
            "command": [sys.executable, str(RECORD_BATCH), str(output)],
            "queue_url": shared.queue_url,
        }
        config = tmp_path / f"{server}.toml"
        config.write_text(render_config(own, tmp_path / server / "state", [], [trigger]))
        agent = start_agent(config)
        agents.append(agent)
    for agent in agents:
        agent.wait_for_log("ready: polling", count=2)

    for batch in range(4):
        s3.put_object(Bucket=pipeline.bucket, Key=f"incoming/s{batch}/f", Body=b"f")
        s3.put_object(Bucket=pipeline.bucket, Key=f"incoming/s{batch}/_READY", Body=b"")
    wait_until(lambda: len(runs(output)) >= 4, what="four batches")
    wait_until(lambda: queue_depth(shared, shared.queue_url) == 0, what="shared queue drained")
    time.sleep(1)  # a duplicate run, if there were one, would have been recorded by now
    prefixes = sorted(run["env"]["S3PULL_BATCH_PREFIX"] for run in runs(output))
    assert prefixes == [f"incoming/s{batch}/" for batch in range(4)]
    for agent in agents:
        assert agent.stop() == 0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a.csv\n", [("a.csv", None)]),
        (
            'a.csv "5D41402ABC4B2A76B9719D911017C592"\n',
            [("a.csv", "5d41402abc4b2a76b9719d911017c592")],
        ),
        (
            "dir/b c.csv 5d41402abc4b2a76b9719d911017c592-3\r\n\n",
            [("dir/b c.csv", "5d41402abc4b2a76b9719d911017c592-3")],
        ),
        ("name with spaces.txt\n", [("name with spaces.txt", None)]),
        ("\n\n", []),
    ],
)
def test_parse_manifest(text: str, expected: list[tuple[str, str | None]]) -> None:
    assert list(parse_manifest(text).files) == expected


def test_a_very_long_output_line_does_not_hang_the_command(
    s3: Any, pipeline: Pipeline, tmp_path: Path, start_agent: Callable[..., Agent]
) -> None:
    output = tmp_path / "long.txt"
    script = "import sys; sys.stdout.write('x' * 300_000 + '\\nend\\n')"
    trigger = {
        "name": "long",
        "bucket": pipeline.bucket,
        "prefix": "incoming/",
        "marker": "_READY",
        "directory": tmp_path / "batches",
        "command": [sys.executable, "-c", script],
        "timeout_seconds": 60,
    }
    config = tmp_path / "long.toml"
    config.write_text(render_config(pipeline, tmp_path / "state", [], [trigger]))
    agent = start_agent(config)
    agent.wait_ready()
    s3.put_object(Bucket=pipeline.bucket, Key="incoming/l1/_READY", Body=b"")
    agent.wait_for_log("batch incoming/l1/ succeeded")
    assert "long incoming/l1/ [stdout] end" in agent.log
    assert agent.log.count("x" * 65536) >= 4
    assert not output.exists()
    assert agent.stop() == 0


def test_sigterm_lets_a_running_batch_finish(
    s3: Any, pipeline: Pipeline, tmp_path: Path, start_agent: Callable[..., Agent]
) -> None:
    config, output = trigger_config(tmp_path, pipeline, "sleep", "3")
    agent = start_agent(config)
    agent.wait_ready()
    s3.put_object(Bucket=pipeline.bucket, Key="incoming/g1/_READY", Body=b"")
    wait_until(lambda: runs(output), what="the command to start")
    assert agent.stop(signal.SIGTERM) == 0
    assert "draining 1 message(s) in flight" in agent.log
    assert "batch incoming/g1/ succeeded" in agent.log
    # Finished inside the drain, so its message was deleted before the agent exited.
    assert queue_depth(pipeline, pipeline.queue_url) == 0


def test_second_signal_hands_a_running_batch_back(
    s3: Any, sqs: Any, pipeline: Pipeline, tmp_path: Path, start_agent: Callable[..., Agent]
) -> None:
    # A long visibility timeout: only an explicit hand-back makes the marker visible soon.
    config, output = trigger_config(
        tmp_path, pipeline, "sleep", "600", queue={"visibility_timeout": 600}
    )
    agent = start_agent(config)
    agent.wait_ready()
    s3.put_object(Bucket=pipeline.bucket, Key="incoming/g2/_READY", Body=b"")
    wait_until(lambda: runs(output), what="the command to start")
    agent.process.send_signal(signal.SIGTERM)
    agent.wait_for_log("draining 1 message(s) in flight")
    assert agent.stop(signal.SIGTERM, timeout=30) == 0
    assert "handing back 1 unfinished message(s)" in agent.log
    assert "stopping the command's process group" in agent.log
    # Handed back at once (visibility 0), not after the visibility timeout: the next
    # agent to poll gets the marker and runs the batch.
    response = sqs.receive_message(
        QueueUrl=pipeline.queue_url, WaitTimeSeconds=1, VisibilityTimeout=0
    )
    assert any("_READY" in m["Body"] for m in response.get("Messages", ()))


def test_sigterm_hands_back_a_batch_that_outlasts_the_drain_deadline(
    s3: Any, sqs: Any, pipeline: Pipeline, tmp_path: Path, start_agent: Callable[..., Agent]
) -> None:
    # One SIGTERM only: the agent waits the whole drain deadline (30 s) for the run,
    # then stops its process group and hands the marker back at once.
    config, output = trigger_config(
        tmp_path, pipeline, "sleep", "600", queue={"visibility_timeout": 600}
    )
    agent = start_agent(config)
    agent.wait_ready()
    s3.put_object(Bucket=pipeline.bucket, Key="incoming/d1/_READY", Body=b"")
    wait_until(lambda: runs(output), what="the command to start")
    assert agent.stop(signal.SIGTERM, timeout=90) == 0
    assert "draining 1 message(s) in flight (deadline 30 s)" in agent.log
    assert "handing back 1 unfinished message(s)" in agent.log
    assert "sent SIGTERM to process group" in agent.log
    response = sqs.receive_message(
        QueueUrl=pipeline.queue_url, WaitTimeSeconds=1, VisibilityTimeout=0
    )
    assert any("_READY" in m["Body"] for m in response.get("Messages", ()))

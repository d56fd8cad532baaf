"""What a new operator reads when something is wrong (issue 16, item 10): each message
names the setting to change, the file it is in and what is wrong with it."""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conftest import Agent, render_config, wait_until
from conftest import run_s3pull as s3pull
from s3pull.emulator import Pipeline
from test_provision import FakeMetadata, topic_config
from test_trigger import RECORD_BATCH

# AWS_REGION and AWS_DEFAULT_REGION as an operator's shell has them: unset ("" is unset
# to the SDKs and to s3pull alike).
NO_REGION_ENV = {"AWS_REGION": "", "AWS_DEFAULT_REGION": ""}


def mirror_config(tmp_path: Path, pipeline: Pipeline, **queue: object) -> Path:
    mirror = {
        "name": "data",
        "bucket": pipeline.bucket,
        "prefix": "data/",
        "directory": tmp_path / "mirror",
    }
    path = tmp_path / "s3pull.toml"
    path.write_text(render_config(pipeline, tmp_path / "state", [mirror], queue=queue))
    return path


def without_region(path: Path) -> Path:
    text = path.read_text()
    path.write_text(
        "\n".join(line for line in text.splitlines() if not line.startswith("region =")) + "\n"
    )
    return path


def test_no_region_is_a_configuration_error_before_anything_says_ok(
    tmp_path: Path, pipeline: Pipeline
) -> None:
    path = without_region(mirror_config(tmp_path, pipeline))
    for verb in ("check", "run", "sync", "status"):
        result = s3pull(verb, "--config", str(path), env=NO_REGION_ENV)
        assert result.returncode == 78, (verb, result.stdout, result.stderr)
        assert "configuration OK" not in result.stdout
        assert f"{path}: aws.region: not set" in result.stderr
        assert "under [aws], or set AWS_REGION" in result.stderr
        assert "instance metadata, the last source, cannot tell" in result.stderr


def test_region_from_instance_metadata_with_a_fixed_queue_url(
    tmp_path: Path, pipeline: Pipeline
) -> None:
    metadata = FakeMetadata("i-0123456789abcdef0")  # its placement/region is us-east-1
    try:
        path = without_region(mirror_config(tmp_path, pipeline))
        result = s3pull("check", "--config", str(path), env={**NO_REGION_ENV, **metadata.env})
    finally:
        metadata.server.shutdown()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "every link holds" in result.stdout


def test_a_queue_missing_in_the_region_names_both_settings_and_the_daemon_keeps_trying(
    tmp_path: Path, pipeline: Pipeline, start_agent: Callable[..., Agent]
) -> None:
    # The pipeline's queue is in us-east-1; the file says eu-west-1, a typical slip.
    path = mirror_config(tmp_path, pipeline)
    path.write_text(path.read_text().replace('region = "us-east-1"', 'region = "eu-west-1"'))
    advice = (
        f"queue {pipeline.queue_url} does not exist in region eu-west-1: check [queue] url"
        f" and [aws] region in {path}"
    )

    checked = s3pull("check", "--config", str(path))
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert f"first broken link: {advice}" in checked.stdout

    agent = start_agent(path)
    # Each retry says it, at a backoff that doubles (up to a minute): not a flood.
    agent.wait_for_log(f"checking the queue failed, retrying in 2 s: {advice}")
    assert agent.log.count(advice) >= 2

    def backing_off() -> dict[str, Any] | None:
        status = json.loads(s3pull("status", "--json", "--config", str(path)).stdout)
        return status if status["verdict"] == "BACKING OFF" else None

    status = wait_until(backing_off, what="status to say BACKING OFF")
    assert advice in status["daemon"]["phase"]
    assert agent.process.poll() is None  # never exits over it
    assert agent.stop() == 0


def test_an_unusable_state_directory_names_its_key_file_and_problem(
    tmp_path: Path, pipeline: Pipeline
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    state = blocker / "state"
    mirror = {"name": "data", "bucket": pipeline.bucket, "directory": tmp_path / "mirror"}
    path = tmp_path / "s3pull.toml"
    path.write_text(render_config(pipeline, state, [mirror]))
    wanted = (
        f"configuration error: {path}: agent.state_directory: {state} cannot be used:"
        f" {blocker} is not a directory"
    )
    for verb in (["run"], ["sync"], ["sync", "--dry-run"], ["status"]):
        result = s3pull(*verb, "--config", str(path))
        assert result.returncode == 78, (verb, result.stderr)
        assert wanted in result.stderr, (verb, result.stderr)
    checked = s3pull("check", "--config", str(path))
    assert checked.returncode == 1
    assert (
        f"PROBLEM state directory {state} (agent.state_directory): {blocker} is not a directory"
        in checked.stdout
    )


def test_sync_dry_run_prints_sizes_as_the_progress_bar_does(
    tmp_path: Path, pipeline: Pipeline, s3: Any
) -> None:
    s3.put_object(Bucket=pipeline.bucket, Key="data/big.bin", Body=b"x" * (3 * 1024 * 1024 // 2))
    s3.put_object(Bucket=pipeline.bucket, Key="data/small.txt", Body=b"12345")
    result = s3pull("sync", "--dry-run", "--config", str(mirror_config(tmp_path, pipeline)))
    assert result.returncode == 0, result.stderr
    assert "data: download data/big.bin (1.5 MiB)" in result.stdout
    assert "data: download data/small.txt (5 B)" in result.stdout
    assert "data: 2 to download (1.5 MiB), 0 to delete, 0 up to date" in result.stdout


def test_a_second_deprovision_says_already_gone_for_each_part(
    tmp_path: Path, pipeline: Pipeline
) -> None:
    instance = f"i-{uuid.uuid4().hex[:17]}"
    path = topic_config(tmp_path, pipeline, instance_id=instance)
    assert s3pull("provision", "--config", str(path)).returncode == 0

    first = s3pull("deprovision", "--config", str(path))
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == [
        f"subscription of queue s3pull-{instance}: removed",
        f"queue s3pull-{instance}: removed",
        f"queue s3pull-{instance}-dlq: removed",
    ]
    second = s3pull("deprovision", "--config", str(path))
    assert second.returncode == 0, second.stderr
    assert second.stdout.splitlines() == [
        f"subscription of queue s3pull-{instance}: already gone",
        f"queue s3pull-{instance}: already gone",
        f"queue s3pull-{instance}-dlq: already gone",
    ]


def test_a_trigger_batch_download_is_labelled_as_such_and_status_keeps_its_columns(
    tmp_path: Path, pipeline: Pipeline, s3: Any, start_agent: Callable[..., Agent]
) -> None:
    output = tmp_path / "runs.jsonl"
    mirror = {"name": "data", "bucket": pipeline.bucket, "prefix": "data/"}
    trigger = {
        "name": "nightly-orders",  # longer than status's first column
        "bucket": pipeline.bucket,
        "prefix": "incoming/",
        "marker": "_READY",
        "directory": tmp_path / "batches",
        "command": [sys.executable, str(RECORD_BATCH), str(output)],
    }
    path = tmp_path / "s3pull.toml"
    path.write_text(
        render_config(
            pipeline, tmp_path / "state", [{**mirror, "directory": tmp_path / "m"}], [trigger]
        )
    )
    agent = start_agent(path)
    agent.wait_ready()
    s3.put_object(Bucket=pipeline.bucket, Key="data/report.csv", Body=b"a,b\n")
    s3.put_object(Bucket=pipeline.bucket, Key="incoming/b1/orders.csv", Body=b"id\n1\n")
    s3.put_object(Bucket=pipeline.bucket, Key="incoming/b1/_READY", Body=b"")
    agent.wait_for_log("nightly-orders: batch incoming/b1/ succeeded")

    assert (
        "trigger:nightly-orders: downloaded incoming/b1/orders.csv (batch incoming/b1/,"
        in agent.log
    )
    assert "incoming/b1/orders.csv (reconcile" not in agent.log

    def trigger_in_status() -> str | None:
        result = s3pull("status", "--config", str(path))
        return result.stdout if "trigger nightly-orders" in result.stdout else None

    shown = wait_until(trigger_in_status, what="status to show the trigger's last change")
    # Longest first: "trigger nightly-orders" before "trigger".
    labels = ("trigger nightly-orders", "reconcile", "changes", "problem", "refused")
    labels += ("trigger", "daemon", "queue", "error", "data", "lag")
    columns = set()
    for line in shown.splitlines()[1:]:
        label = next(name for name in labels if line[2:].startswith(name + " "))
        rest = line[2 + len(label) :]
        columns.add(len(line) - len(rest.lstrip(" ")))
    assert len(columns) == 1, shown
    assert "  trigger nightly-orders last: downloaded incoming/b1/orders.csv" in shown
    assert agent.stop() == 0


def test_a_fixed_queue_deleted_while_running_names_both_settings_on_each_retry(
    tmp_path: Path, pipeline: Pipeline, sqs: Any, start_agent: Callable[..., Agent]
) -> None:
    path = mirror_config(tmp_path, pipeline)
    agent = start_agent(path)
    agent.wait_ready()
    sqs.delete_queue(QueueUrl=pipeline.queue_url)
    agent.wait_for_log(
        f"SQS receive from {pipeline.queue_url} failed, retrying in 1 s: queue"
        f" {pipeline.queue_url} does not exist in region us-east-1: check [queue] url and"
        f" [aws] region in {path}"
    )
    assert agent.process.poll() is None
    assert agent.stop() == 0

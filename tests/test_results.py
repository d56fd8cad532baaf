"""Trigger results: each run's outcome and output in S3, read back field by field.

Real agents, real commands (tests/commands/record_batch.py), the moto server with the
real S3 -> SNS -> SQS path.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from conftest import Agent, run_s3pull, wait_until
from s3pull.emulator import Pipeline
from s3pull.results import LOG_CAP_BYTES
from test_trigger import runs, trigger_config

INSTANCE = "i-0results0test0"


@pytest.fixture
def results_bucket(s3: Any) -> str:
    # A bucket of its own, as an operator would keep results apart from uploads.
    name = f"results-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


def results_config(
    tmp_path: Path, pipeline: Pipeline, results: str, *behaviour: str, **settings: Any
) -> tuple[Path, Path]:
    config, output = trigger_config(tmp_path, pipeline, *behaviour, results=results, **settings)
    # The instance id names each result; off EC2 it comes from the configuration.
    text = config.read_text().replace("[agent]\n", f'[agent]\ninstance_id = "{INSTANCE}"\n')
    config.write_text(text)
    return config, output


def read_result(s3: Any, bucket: str, key: str) -> dict[str, Any] | None:
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError:
        return None
    return dict(json.loads(body))


def upload_batch(s3: Any, pipeline: Pipeline, batch: str) -> tuple[int, str]:
    """Two files and an empty marker; returns (bytes of the files, the marker's ETag)."""
    files = {f"incoming/{batch}/orders.csv": b"id\n1\n2\n", f"incoming/{batch}/x.csv": b"x\n"}
    for key, body in files.items():
        s3.put_object(Bucket=pipeline.bucket, Key=key, Body=body)
    etag = s3.put_object(Bucket=pipeline.bucket, Key=f"incoming/{batch}/_READY", Body=b"")["ETag"]
    return sum(len(body) for body in files.values()), etag.strip('"')


def status(config: Path) -> dict[str, Any]:
    return dict(json.loads(run_s3pull("status", "--json", "--config", str(config)).stdout))


def test_success_writes_the_result_and_the_log(
    s3: Any,
    pipeline: Pipeline,
    results_bucket: str,
    tmp_path: Path,
    start_agent: Callable[..., Agent],
) -> None:
    config, output = results_config(tmp_path, pipeline, f"s3://{results_bucket}/runs/")
    agent = start_agent(config)
    agent.wait_ready()
    size, etag = upload_batch(s3, pipeline, "b1")

    key = f"runs/incoming/b1/{INSTANCE}.json"
    result = wait_until(lambda: read_result(s3, results_bucket, key), what="the result object")
    assert len(runs(output)) == 1
    assert result["trigger"] == "orders"
    assert result["bucket"] == pipeline.bucket
    assert result["batch"] == "incoming/b1/"
    assert result["marker_key"] == "incoming/b1/_READY"
    assert result["marker_etag"] == etag
    assert result["instance"] == INSTANCE
    assert result["attempt"] == 1
    assert result["result"] == "succeeded"
    assert result["exit_status"] == 0
    assert result["timed_out"] is False
    assert result["error"] is None
    assert result["files"] == 2
    assert result["bytes"] == size
    started, ended = (datetime.fromisoformat(result[k]) for k in ("started", "ended"))
    assert started.utcoffset() is not None and started <= ended
    assert result["output_tail"] == ["[stdout] processed 2 file(s)", "[stderr] a line on stderr"]
    assert result["log"] == f"s3://{results_bucket}/runs/incoming/b1/{INSTANCE}.log"
    assert result["log_truncated"] is False
    assert result["log_cap_bytes"] == LOG_CAP_BYTES

    log = s3.get_object(Bucket=results_bucket, Key=f"runs/incoming/b1/{INSTANCE}.log")
    text = log["Body"].read().decode()
    assert text == "[stdout] processed 2 file(s)\n[stderr] a line on stderr\n"
    assert result["output_bytes"] == len(text.encode())
    agent.wait_for_log(f"result (succeeded) written to s3://{results_bucket}/{key}")

    # `status` says where the last results went.
    daemon = wait_until(
        lambda: status(config)["daemon"] if status(config)["daemon"]["trigger_results"] else None
    )
    (shown,) = daemon["trigger_results"]
    assert shown["url"] == f"s3://{results_bucket}/{key}"
    assert (shown["result"], shown["written"]) == ("succeeded", True)
    human = run_s3pull("status", "--config", str(config)).stdout
    assert f"result        succeeded -> s3://{results_bucket}/{key}" in human
    assert agent.stop() == 0


def test_a_failed_run_writes_each_attempt(
    s3: Any,
    pipeline: Pipeline,
    results_bucket: str,
    tmp_path: Path,
    start_agent: Callable[..., Agent],
) -> None:
    config, output = results_config(tmp_path, pipeline, f"s3://{results_bucket}/", "exit", "3")
    agent = start_agent(config)
    agent.wait_ready()
    size, etag = upload_batch(s3, pipeline, "b2")

    key = f"incoming/b2/{INSTANCE}.json"
    # The message comes back and the command runs again: the result says which attempt.
    result = wait_until(
        lambda: (r := read_result(s3, results_bucket, key)) and r["attempt"] >= 2 and r,
        timeout=60,
        what="the second attempt's result",
    )
    assert len(runs(output)) >= 2
    assert result["result"] == "failed"
    assert result["exit_status"] == 3
    assert result["timed_out"] is False
    assert "command exited with status 3" in result["error"]
    assert (result["marker_etag"], result["files"], result["bytes"]) == (etag, 2, size)
    assert result["output_tail"][-1] == "[stderr] a line on stderr"
    agent.wait_for_log("result (failed) written to")
    assert agent.stop() == 0


def test_a_timed_out_run_says_so(
    s3: Any,
    pipeline: Pipeline,
    results_bucket: str,
    tmp_path: Path,
    start_agent: Callable[..., Agent],
) -> None:
    config, _ = results_config(
        tmp_path, pipeline, f"s3://{results_bucket}/r/", "sleep", "60", timeout_seconds=1
    )
    agent = start_agent(config)
    agent.wait_ready()
    upload_batch(s3, pipeline, "b3")

    key = f"r/incoming/b3/{INSTANCE}.json"
    result = wait_until(lambda: read_result(s3, results_bucket, key), what="the result object")
    assert result["result"] == "timed out"
    assert result["timed_out"] is True
    assert result["exit_status"] is None
    assert "timed out after 1 s" in result["error"]
    assert result["attempt"] == 1
    # What it printed before it was stopped is kept.
    assert "[stdout] processed 2 file(s)" in result["output_tail"]
    log = s3.get_object(Bucket=results_bucket, Key=f"r/incoming/b3/{INSTANCE}.log")
    assert b"[stdout] processed 2 file(s)\n" in log["Body"].read()
    assert agent.stop() == 0


def test_a_result_that_cannot_be_written_never_fails_the_run(
    s3: Any, pipeline: Pipeline, tmp_path: Path, start_agent: Callable[..., Agent]
) -> None:
    missing = f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/results/"
    config, output = results_config(tmp_path, pipeline, missing)
    agent = start_agent(config)
    agent.wait_ready()
    upload_batch(s3, pipeline, "b4")

    agent.wait_for_log("could not write the run's result")
    agent.wait_for_log("orders: batch incoming/b4/ succeeded")
    daemon = wait_until(
        lambda: status(config)["daemon"] if status(config)["daemon"]["trigger_results"] else None
    )
    assert daemon["counters"]["results_unwritten"] == 1
    (shown,) = daemon["trigger_results"]
    assert shown["written"] is False and "NoSuchBucket" in shown["error"]
    assert daemon["failing"] == {}  # the batch ran: nothing to retry
    assert (
        "result        NOT WRITTEN to " + missing
        in run_s3pull("status", "--config", str(config)).stdout
    )
    # The message was acknowledged: the command ran once and is not run again.
    wait_until(lambda: status(config)["queues"][0]["in_flight"] == 0, what="the ack")
    assert len(runs(output)) == 1
    assert agent.stop() == 0


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("results/", "must be an S3 location like 's3://bucket/results/'"),
        ("s3://Bad_Bucket/r/", "the bucket name 'Bad_Bucket' is not valid"),
        ("s3://bucket-ok/a//b/", "an empty folder name"),
        (7, "must be a string"),
    ],
)
def test_results_must_be_an_s3_location(
    tmp_path: Path, pipeline: Pipeline, value: Any, problem: str
) -> None:
    config, _ = trigger_config(tmp_path, pipeline, results=value)
    result = run_s3pull("check", "--config", str(config))
    assert result.returncode == 78
    assert str(config) in result.stderr
    assert "trigger[0].results" in result.stderr
    assert problem in result.stderr


@pytest.mark.parametrize("folder", ["incoming/r", ""])
def test_results_inside_the_triggers_own_folder_are_refused(
    tmp_path: Path, pipeline: Pipeline, folder: str
) -> None:
    # incoming/r/incoming/b1/i-....json, or with no folder incoming/b1/i-....json itself,
    # would be listed as a batch file.
    results = f"s3://{pipeline.bucket}/{folder}"
    config, _ = trigger_config(tmp_path, pipeline, results=results)
    result = run_s3pull("check", "--config", str(config))
    assert result.returncode == 78
    assert "trigger[0].results" in result.stderr
    assert "must not lie inside the trigger's own folder" in result.stderr


def test_check_knows_whether_results_may_be_written(
    s3: Any, pipeline: Pipeline, results_bucket: str, tmp_path: Path
) -> None:
    config, _ = results_config(tmp_path, pipeline, f"s3://{results_bucket}/runs/")
    result = run_s3pull("check", "--config", str(config))
    assert f"trigger orders: results may be written to s3://{results_bucket}/runs/" in (
        result.stdout
    ), result.stdout + result.stderr
    # It writes nothing to find out.
    assert s3.list_objects_v2(Bucket=results_bucket).get("KeyCount", 0) == 0

    missing = f"no-such-bucket-{uuid.uuid4().hex[:8]}"
    config, _ = results_config(tmp_path, pipeline, f"s3://{missing}/runs/")
    result = run_s3pull("check", "--config", str(config))
    assert result.returncode == 1
    assert f"the results bucket {missing} does not exist" in result.stdout


def test_an_attempt_that_fails_before_the_command_is_reported_too(
    s3: Any,
    pipeline: Pipeline,
    results_bucket: str,
    tmp_path: Path,
    start_agent: Callable[..., Agent],
) -> None:
    # A manifest naming a file that never comes: the attempt fails without running the
    # command, and will be retried; the result says so.
    config, output = results_config(
        tmp_path, pipeline, f"s3://{results_bucket}/", manifest_timeout_seconds=0
    )
    agent = start_agent(config)
    agent.wait_ready()
    s3.put_object(Bucket=pipeline.bucket, Key="incoming/b6/a.csv", Body=b"a\n")
    s3.put_object(Bucket=pipeline.bucket, Key="incoming/b6/_READY", Body=b"a.csv\nmissing.csv\n")

    key = f"incoming/b6/{INSTANCE}.json"
    result = wait_until(lambda: read_result(s3, results_bucket, key), what="the result object")
    assert result["result"] == "failed"
    assert result["exit_status"] is None
    assert result["timed_out"] is False
    assert "the manifest still waits for 1 file(s): missing.csv" in result["error"]
    assert result["output_tail"] == [] and result["output_bytes"] == 0
    assert runs(output) == []  # the command never ran
    assert agent.stop() == 0

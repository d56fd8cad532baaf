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

from conftest import Agent, queue_depth, receive_bodies, render_config, run_s3pull, wait_until
from s3pull.emulator import Pipeline, client, create_pipeline
from s3pull.trigger import parse_manifest
from test_agent import s3_event

RECORD_BATCH = Path(__file__).parent / "commands" / "record_batch.py"
EVENT_TIME = "2026-11-30T10:00:00.000Z"


def runs(output: Path) -> list[dict[str, Any]]:
    if not output.exists():
        return []
    return [json.loads(line) for line in output.read_text().splitlines()]


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie awaiting its reaper counts as stopped.
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"


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


def test_an_empty_marker_with_no_files_runs_warns_and_is_counted(
    s3: Any, pipeline: Pipeline, tmp_path: Path, start_agent: Callable[..., Agent]
) -> None:
    # Issue 16: the marker uploaded before its files ran the command on nothing and
    # reported plain success. It still runs (the batch is what S3 lists), but says so.
    config, output = trigger_config(tmp_path, pipeline)
    agent = start_agent(config)
    agent.wait_ready()
    s3.put_object(Bucket=pipeline.bucket, Key="incoming/early/_READY", Body=b"")

    (run,) = wait_until(lambda: runs(output), what="the command to run")
    assert run["files"] == []
    agent.wait_for_log("orders: batch incoming/early/ succeeded-empty")
    assert "running the command on an empty batch" in agent.log

    def status() -> dict[str, Any]:
        return dict(json.loads(run_s3pull("status", "--json", "--config", str(config)).stdout))

    # The status file is rewritten on the daemon's next tick.
    daemon = wait_until(lambda: status()["daemon"] if status()["daemon"]["trigger_runs"] else None)
    assert daemon["counters"]["empty_batches"] == 1
    assert [r["result"] for r in daemon["trigger_runs"]] == ["succeeded-empty"]
    assert agent.stop() == 0


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


def marker_event(pipeline: Pipeline, *keys: str, event_time: str = EVENT_TIME) -> str:
    """One notification body with an ObjectCreated record per key, without eTag or size,
    as a replayed or forged event might be."""
    records = []
    for key in keys:
        (record,) = json.loads(s3_event(pipeline, "ObjectCreated:Put", key))["Records"]
        record["eventTime"] = event_time
        records.append(record)
    return json.dumps({"Records": records})


def drained(pipeline: Pipeline) -> None:
    wait_until(lambda: queue_depth(pipeline, pipeline.queue_url) == 0, what="queue drained")


@pytest.mark.parametrize("versioned", [False, True], ids=["etag-last-modified", "version-id"])
def test_a_marker_runs_once_per_version_of_the_marker_object(
    s3: Any,
    sqs: Any,
    pipeline: Pipeline,
    tmp_path: Path,
    start_agent: Callable[..., Agent],
    versioned: bool,
) -> None:
    if versioned:
        s3.put_bucket_versioning(
            Bucket=pipeline.bucket, VersioningConfiguration={"Status": "Enabled"}
        )
    config, output = trigger_config(tmp_path, pipeline)
    agent = start_agent(config)
    agent.wait_ready()
    s3.put_object(Bucket=pipeline.bucket, Key="incoming/r1/data", Body=b"d")
    s3.put_object(Bucket=pipeline.bucket, Key="incoming/r1/_READY", Body=b"")
    wait_until(lambda: runs(output), what="the first run")
    drained(pipeline)

    # The same marker event replayed: a new eventTime each time and no eTag. The marker
    # object in S3 is the one that already ran, so nothing runs again.
    for second in range(3):
        body = marker_event(
            pipeline, "incoming/r1/_READY", event_time=f"2026-12-01T10:00:0{second}.000Z"
        )
        sqs.send_message(QueueUrl=pipeline.queue_url, MessageBody=body)
    drained(pipeline)
    assert len(runs(output)) == 1

    # The marker uploaded again, same (empty) bytes: a new version, so the batch runs again.
    # Without versioning S3 tells the uploads apart by LastModified, to the second.
    if not versioned:
        time.sleep(1.1)
    s3.put_object(Bucket=pipeline.bucket, Key="incoming/r1/_READY", Body=b"")
    wait_until(lambda: len(runs(output)) == 2, what="the second run")
    drained(pipeline)
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


@pytest.mark.moto_only(
    "LocalStack keeps serving the long poll the stopping agent cut short, and that dead"
    " poll takes the handed-back marker (invisible then for the visibility timeout)"
)
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


@pytest.mark.parametrize(
    "marker",
    ["incoming/_READY", "incoming//_READY", "incoming/b1//_READY"],
)
def test_a_marker_outside_a_batch_is_refused_and_never_runs(
    s3: Any, pipeline: Pipeline, tmp_path: Path, start_agent: Callable[..., Agent], marker: str
) -> None:
    config, output = trigger_config(tmp_path, pipeline)
    agent = start_agent(config)
    agent.wait_ready()
    # Another batch's files, its marker not there yet, and a file at the top.
    s3.put_object(Bucket=pipeline.bucket, Key="incoming/b1/orders.csv", Body=b"b1")
    s3.put_object(Bucket=pipeline.bucket, Key="incoming/top.csv", Body=b"top")
    s3.put_object(Bucket=pipeline.bucket, Key=marker, Body=b"")
    # A proper batch after it, to show the trigger still works.
    s3.put_object(Bucket=pipeline.bucket, Key="incoming/ok/f.csv", Body=b"ok")
    s3.put_object(Bucket=pipeline.bucket, Key="incoming/ok/_READY", Body=b"")
    wait_until(lambda: runs(output), what="the proper batch to run")
    drained(pipeline)

    assert [run["env"]["S3PULL_BATCH_PREFIX"] for run in runs(output)] == ["incoming/ok/"]
    # Nothing of the refused marker's "batch" was downloaded either.
    assert sorted(p.name for p in (tmp_path / "batches").iterdir()) == ["ok"]
    assert f"refused key {marker!r}" in agent.log
    assert agent.stop() == 0


@pytest.mark.parametrize("max_parallel", [None, 2])
def test_at_most_max_parallel_batches_run_at_once(
    s3: Any,
    sqs: Any,
    pipeline: Pipeline,
    tmp_path: Path,
    start_agent: Callable[..., Agent],
    max_parallel: int | None,
) -> None:
    running = tmp_path / "running"
    config, output = trigger_config(
        tmp_path, pipeline, "overlap", str(running), "0.5", max_parallel=max_parallel
    )
    markers = [f"incoming/p{batch}/_READY" for batch in range(6)]
    for key in markers:
        s3.put_object(Bucket=pipeline.bucket, Key=key, Body=b"")
    # One message naming every marker, as a burst of uploads can be delivered.
    sqs.purge_queue(QueueUrl=pipeline.queue_url)
    sqs.send_message(QueueUrl=pipeline.queue_url, MessageBody=marker_event(pipeline, *markers))
    agent = start_agent(config)
    agent.wait_ready()

    wait_until(lambda: len(runs(output)) == len(markers), what="every batch to run")
    drained(pipeline)
    assert max(run["running"] for run in runs(output)) <= (max_parallel or 1)
    assert agent.stop() == 0


def test_what_a_command_leaves_running_is_stopped_when_it_exits(
    s3: Any, pipeline: Pipeline, tmp_path: Path, start_agent: Callable[..., Agent]
) -> None:
    pidfile = tmp_path / "left-behind.pid"
    config, output = trigger_config(tmp_path, pipeline, "leave", str(pidfile))
    agent = start_agent(config)
    agent.wait_ready()
    s3.put_object(Bucket=pipeline.bucket, Key="incoming/c1/_READY", Body=b"")
    wait_until(lambda: runs(output), what="the command to run")
    drained(pipeline)  # the batch succeeded (exit 0) and its marker was deleted
    left_behind = int(pidfile.read_text())
    assert gone(left_behind)
    assert agent.stop() == 0


def test_the_command_gets_a_clean_environment(
    s3: Any, pipeline: Pipeline, tmp_path: Path, start_agent: Callable[..., Agent]
) -> None:
    config, output = trigger_config(
        tmp_path, pipeline, environment={"ACME_ENV": "prod", "ACME_MODE": "fast lane"}
    )
    agent_env = {
        "AWS_SESSION_TOKEN": "agent-secret",
        "ACME_AGENT_ONLY": "not for the command",
        "PYTHONPATH": "/nowhere",
        "HOME": str(tmp_path),
        "LANG": "C.UTF-8",
        "LC_TIME": "C.UTF-8",
        "TZ": "Europe/Paris",
    }
    agent = start_agent(config, env=agent_env)
    agent.wait_ready()
    s3.put_object(Bucket=pipeline.bucket, Key="incoming/e1/_READY", Body=b"")
    (run,) = wait_until(lambda: runs(output), what="the command to run")

    environ = run["environ"]
    assert not [name for name in environ if name.startswith("AWS_")]
    assert "ACME_AGENT_ONLY" not in environ and "PYTHONPATH" not in environ
    assert environ["ACME_ENV"] == "prod" and environ["ACME_MODE"] == "fast lane"
    assert environ["PATH"] == os.environ["PATH"]
    assert (environ["HOME"], environ["LANG"], environ["LC_TIME"], environ["TZ"]) == (
        str(tmp_path),
        "C.UTF-8",
        "C.UTF-8",
        "Europe/Paris",
    )
    allowed = {"PATH", "HOME", "LANG", "TZ", "ACME_ENV", "ACME_MODE"}
    assert {name for name in environ if not name.startswith(("S3PULL_", "LC_"))} <= allowed
    assert run["env"]["S3PULL_KEY"] == "incoming/e1/_READY"
    assert agent.stop() == 0

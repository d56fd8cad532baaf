"""What an operator sees: `status` against a running daemon, Prometheus metrics scraped
over HTTP, the dead-letter tools, and the log line of an applied change."""

from __future__ import annotations

import json
import socket
import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conftest import Agent, render_config, wait_until
from conftest import run_s3pull as s3pull
from s3pull.emulator import Pipeline
from s3pull.status import verdict
from test_agent import queue_depth, s3_event


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def config_with(tmp_path: Path, pipeline: Pipeline, metrics_port: int | None = None) -> Path:
    path = tmp_path / "s3pull.toml"
    text = render_config(
        pipeline,
        tmp_path / "state",
        [
            {
                "name": "data",
                "bucket": pipeline.bucket,
                "prefix": "data/",
                "directory": tmp_path / "mirror",
            }
        ],
    )
    if metrics_port:
        text += f'[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n'
    path.write_text(text)
    return path


def test_status_tells_at_a_glance_whether_the_server_is_in_sync(
    tmp_path: Path, pipeline: Pipeline, s3: Any, start_agent: Callable[..., Agent]
) -> None:
    config = config_with(tmp_path, pipeline)
    never = s3pull("status", "--config", str(config))
    assert never.returncode == 1
    assert "s3pull: NOT RUNNING" in never.stdout
    assert "has never run with this state directory" in never.stdout

    agent = start_agent(config)
    agent.wait_ready()
    s3.put_object(Bucket=pipeline.bucket, Key="data/report.csv", Body=b"a,b\n")
    agent.wait_for_log("data: downloaded data/report.csv (ObjectCreated:Put, 4 bytes,")

    def in_sync() -> subprocess.CompletedProcess[str] | None:
        result = s3pull("status", "--config", str(config))
        return result if result.returncode == 0 else None

    result = wait_until(in_sync, what="status to say IN SYNC")
    assert "s3pull: IN SYNC" in result.stdout
    assert "daemon        running" in result.stdout
    queue_name = pipeline.queue_url.rsplit("/", 1)[1]
    assert f"queue         {queue_name}: 0 waiting" in result.stdout
    assert "0 dead-lettered" in result.stdout
    assert "data          last: downloaded data/report.csv (4 bytes)" in result.stdout

    data = json.loads(s3pull("status", "--json", "--config", str(config)).stdout)
    assert data["verdict"] == "IN SYNC"
    assert data["alive"] is True
    assert data["daemon"]["counters"]["applied"] >= 1
    assert data["queues"][0]["dead_lettered"] == 0
    assert data["daemon"]["last_reconcile"]["failed"] == 0

    assert agent.stop() == 0
    stopped = s3pull("status", "--config", str(config))
    assert stopped.returncode == 1
    assert "s3pull: NOT RUNNING" in stopped.stdout
    assert "daemon        not running" in stopped.stdout


def test_verdicts() -> None:
    running = {"phase": "in sync"}
    assert verdict(None, False, []) == "NOT RUNNING"
    assert verdict(running, False, []) == "NOT RUNNING"
    assert verdict(running, True, [{"visible": 0}]) == "IN SYNC"
    assert verdict(running, True, [{"visible": 12}]) == "BEHIND"
    assert verdict({"phase": "bootstrapping"}, True, []) == "BOOTSTRAPPING"
    assert verdict({"phase": "backing off: SQS receive failed"}, True, []) == "BACKING OFF"


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def test_metrics_are_served_in_prometheus_text_format(
    tmp_path: Path, pipeline: Pipeline, s3: Any, sqs: Any, start_agent: Callable[..., Agent]
) -> None:
    port = free_port()
    s3.put_object(Bucket=pipeline.bucket, Key="data/early.txt", Body=b"12345")
    agent = start_agent(config_with(tmp_path, pipeline, port))
    agent.wait_ready()
    s3.put_object(Bucket=pipeline.bucket, Key="data/late.txt", Body=b"1234567")
    sqs.send_message(
        QueueUrl=pipeline.queue_url,
        MessageBody=s3_event(pipeline, "ObjectCreated:Put", "data/../x", size=1),
    )
    sqs.send_message(QueueUrl=pipeline.queue_url, MessageBody="not json")
    agent.wait_for_log("refused key 'data/../x'")
    agent.wait_for_log("cannot be parsed")

    samples = wait_until(
        lambda: (
            (m := scrape(port)).get(
                's3pull_changes_applied_total{mirror="data",outcome="downloaded"}'
            )
            == 2
            and m
        ),
        what="two downloads counted",
    )
    assert samples['s3pull_downloaded_bytes_total{mirror="data"}'] == 12
    assert samples['s3pull_refused_keys_total{mirror="data"}'] == 1
    assert samples['s3pull_errors_total{cause="parse"}'] >= 1
    assert samples['s3pull_reconcile_duration_seconds_count{mirror="data"}'] == 1
    assert samples["s3pull_queue_lag_seconds_count"] >= 1
    assert "s3pull_messages_in_flight" in samples
    assert agent.stop() == 0


def test_dlq_list_shows_dead_letters_and_redrive_moves_them_back(
    tmp_path: Path, pipeline: Pipeline, sqs: Any
) -> None:
    config = config_with(tmp_path, pipeline)
    bodies = ["not json", s3_event(pipeline, "ObjectCreated:Put", "data/a.txt", size=1)]
    for body in bodies:
        sqs.send_message(QueueUrl=pipeline.dead_letter_url, MessageBody=body)

    listing = s3pull("dlq", "list", "--config", str(config))
    assert listing.returncode == 0, listing.stderr
    assert "2 dead-lettered message(s)" in listing.stdout
    assert "unparseable:" in listing.stdout
    assert f"ObjectCreated:Put s3://{pipeline.bucket}/data/a.txt" in listing.stdout
    rows = json.loads(s3pull("dlq", "list", "--json", "--config", str(config)).stdout)
    assert sorted(row["body"] for row in rows) == sorted(bodies)
    assert queue_depth(pipeline, pipeline.dead_letter_url) == 2  # listing removes nothing

    redrive = s3pull("dlq", "redrive", "--config", str(config))
    assert redrive.returncode == 0, redrive.stderr
    assert "moved 2 message(s)" in redrive.stdout
    assert queue_depth(pipeline, pipeline.dead_letter_url) == 0
    received = sqs.receive_message(
        QueueUrl=pipeline.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1
    )["Messages"]
    assert sorted(m["Body"] for m in received if m["Body"] in bodies) == sorted(bodies)

"""Prefixes are folders (issue 16, item 1): `prefix = "assets"` means `assets/`, never a
string prefix that pulls `assets-archive/...` in or deletes a mirror's files.

End to end: moto server, real S3 -> SNS -> SQS notifications, `s3pull sync` and
`s3pull run` as child processes, real files."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conftest import Agent, queue_depth, render_config, run_s3pull, wait_until
from s3pull.emulator import Pipeline
from test_agent import files_under
from test_trigger import RECORD_BATCH, runs

# What the operator who found the bug had: a folder, and a sibling sharing its name's start.
BUCKET_OBJECTS = {
    "assets/a.txt": b"a",
    "assets/img/b.png": b"png",
    "assets-archive/old.txt": b"old",
}


def mirror_config(tmp_path: Path, pipeline: Pipeline, prefix: str) -> Path:
    mirror = {
        "name": "assets",
        "bucket": pipeline.bucket,
        "prefix": prefix,
        "directory": tmp_path / "assets",
    }
    path = tmp_path / "s3pull.toml"
    path.write_text(render_config(pipeline, tmp_path / "state", [mirror]))
    return path


def test_sync_takes_a_prefix_without_slash_as_its_folder(
    tmp_path: Path, pipeline: Pipeline, s3: Any
) -> None:
    for key, body in BUCKET_OBJECTS.items():
        s3.put_object(Bucket=pipeline.bucket, Key=key, Body=body)
    config = mirror_config(tmp_path, pipeline, "assets")
    directory = tmp_path / "assets"

    # A file an earlier sync of "assets/" left: the operator's sync planned to delete it.
    directory.mkdir()
    (directory / "a.txt").write_bytes(b"a")

    plan = run_s3pull("sync", "--dry-run", "--config", str(config))
    assert plan.returncode == 0, plan.stderr
    assert "assets: download assets/img/b.png (3 B)" in plan.stdout
    assert ", 0 to delete," in plan.stdout
    assert "archive" not in plan.stdout
    assert "refuse" not in plan.stdout

    first = run_s3pull("sync", "--config", str(config))
    assert first.returncode == 0, first.stderr
    assert files_under(directory) == {"a.txt": b"a", "img/b.png": b"png"}

    # What wiped the operator's mirror: a second sync planned every file for deletion.
    again = run_s3pull("sync", "--dry-run", "--config", str(config))
    assert "assets: 0 to download (0 B), 0 to delete, 2 up to date" in again.stdout
    second = run_s3pull("sync", "--config", str(config))
    assert second.returncode == 0, second.stderr
    assert files_under(directory) == {"a.txt": b"a", "img/b.png": b"png"}
    assert not any("archive" in str(path) for path in directory.rglob("*"))
    check = run_s3pull("check", "--config", str(config))
    assert f"mirror assets: s3://{pipeline.bucket}/assets/ -> {directory}" in check.stdout


def test_daemon_mirror_applies_the_folder_and_ignores_its_sibling(
    tmp_path: Path, pipeline: Pipeline, s3: Any, start_agent: Callable[..., Agent]
) -> None:
    for key, body in BUCKET_OBJECTS.items():
        s3.put_object(Bucket=pipeline.bucket, Key=key, Body=body)
    directory = tmp_path / "assets"
    agent = start_agent(mirror_config(tmp_path, pipeline, "assets"))
    agent.wait_ready()
    assert files_under(directory) == {"a.txt": b"a", "img/b.png": b"png"}

    # Through notifications: the sibling's changes come first and must never land.
    s3.put_object(Bucket=pipeline.bucket, Key="assets-archive/new.txt", Body=b"nope")
    s3.delete_object(Bucket=pipeline.bucket, Key="assets-archive/old.txt")
    s3.put_object(Bucket=pipeline.bucket, Key="assets/c.txt", Body=b"c")
    wait_until(lambda: (directory / "c.txt").exists(), what="assets/c.txt on disk")
    wait_until(lambda: queue_depth(pipeline, pipeline.queue_url) == 0, what="queue drained")
    assert agent.stop() == 0
    assert files_under(directory) == {"a.txt": b"a", "img/b.png": b"png", "c.txt": b"c"}


def test_trigger_takes_a_prefix_without_slash_as_its_folder(
    tmp_path: Path, pipeline: Pipeline, s3: Any, start_agent: Callable[..., Agent]
) -> None:
    output = tmp_path / "runs.jsonl"
    trigger = {
        "name": "orders",
        "bucket": pipeline.bucket,
        "prefix": "incoming",
        "marker": "_READY",
        "directory": tmp_path / "batches",
        "command": [sys.executable, str(RECORD_BATCH), str(output)],
    }
    config = tmp_path / "s3pull.toml"
    config.write_text(render_config(pipeline, tmp_path / "state", [], [trigger]))
    agent = start_agent(config)
    agent.wait_ready()

    # A sibling folder's batch first: under a string prefix it ran in batches/-archive/b0.
    s3.put_object(Bucket=pipeline.bucket, Key="incoming-archive/b0/old.csv", Body=b"old")
    s3.put_object(Bucket=pipeline.bucket, Key="incoming-archive/b0/_READY", Body=b"")
    s3.put_object(Bucket=pipeline.bucket, Key="incoming/b1/orders.csv", Body=b"id\n1\n")
    s3.put_object(Bucket=pipeline.bucket, Key="incoming/b1/_READY", Body=b"")

    (run,) = wait_until(lambda: runs(output), what="the command to run")
    wait_until(lambda: queue_depth(pipeline, pipeline.queue_url) == 0, what="queue drained")
    assert agent.stop() == 0
    assert run["cwd"] == str(tmp_path / "batches" / "b1")
    assert run["files"] == ["orders.csv"]
    assert run["env"]["S3PULL_BATCH_PREFIX"] == "incoming/b1/"
    assert len(runs(output)) == 1
    assert sorted(p.name for p in (tmp_path / "batches").iterdir()) == ["b1"]

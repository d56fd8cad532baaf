"""The command line as an operator uses it: exit codes, messages, sync and check."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from conftest import AGENT_ENV, render_config
from conftest import run_s3pull as s3pull
from s3pull import __version__
from s3pull.emulator import Pipeline


def write_config(tmp_path: Path, pipeline: Pipeline, delete: bool = True) -> Path:
    path = tmp_path / "s3pull.toml"
    mirror = {
        "name": "data",
        "bucket": pipeline.bucket,
        "prefix": "data/",
        "directory": tmp_path / "mirror",
        "delete": delete,
    }
    path.write_text(render_config(pipeline, tmp_path / "state", [mirror]))
    return path


def test_version() -> None:
    result = s3pull("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"s3pull {__version__}"


def test_usage_error_exits_2() -> None:
    assert s3pull("frobnicate").returncode == 2
    assert s3pull().returncode == 2


def test_config_errors_exit_78_naming_file_key_and_problem(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        '[queue]\nurl = "https://sqs.eu-west-1.amazonaws.com/1/q"\nwait_time_seconds = 25\n'
        '[[mirror]]\nname = "m"\nbucket = "b-1"\ndirectory = "/srv/m"\n'
    )
    for verb in ("run", "sync", "check"):
        result = s3pull(verb, "--config", str(path))
        assert result.returncode == 78, (verb, result.stderr)
        assert str(path) in result.stderr
        assert "queue.wait_time_seconds" in result.stderr
        assert "between 1 and 20" in result.stderr


def test_missing_config_file_exits_78(tmp_path: Path) -> None:
    result = s3pull("check", "--config", str(tmp_path / "nowhere.toml"))
    assert result.returncode == 78
    assert str(tmp_path / "nowhere.toml") in result.stderr


def test_config_path_from_environment(tmp_path: Path, pipeline: Pipeline) -> None:
    path = write_config(tmp_path, pipeline)
    result = s3pull("check", env={**AGENT_ENV, "S3PULL_CONFIG": str(path)})
    assert result.returncode == 0, result.stderr
    assert f"configuration OK: {path}" in result.stdout
    assert f"mirror data: s3://{pipeline.bucket}/data/ -> {tmp_path / 'mirror'}" in result.stdout


def test_topic_mode_without_instance_id_or_metadata_exits_78(tmp_path: Path) -> None:
    path = tmp_path / "topic.toml"
    path.write_text(
        '[aws]\nregion = "us-east-1"\n'
        '[queue]\ntopic_arn = "arn:aws:sns:us-east-1:123456789012:s3pull-events"\n'
        f'[agent]\nstate_directory = "{tmp_path / "state"}"\n'
        f'[[mirror]]\nname = "m"\nbucket = "b-1"\ndirectory = "{tmp_path / "m"}"\n'
    )
    for verb in ("run", "provision", "deprovision", "check"):
        result = s3pull(verb, "--config", str(path))  # IMDS is disabled in tests
        assert result.returncode == 78, (verb, result.stdout, result.stderr)
        assert "agent.instance_id: not set, and instance metadata cannot supply it" in (
            result.stderr
        )


def test_fleet_verbs_need_a_topic(tmp_path: Path, pipeline: Pipeline) -> None:
    path = write_config(tmp_path, pipeline)
    for verb in ("provision", "deprovision", "gc"):
        result = s3pull(verb, "--config", str(path))
        assert result.returncode == 78
        assert "queue.topic_arn" in result.stderr


def test_sync_dry_run_prints_the_plan_and_changes_nothing(
    tmp_path: Path, pipeline: Pipeline, s3: Any
) -> None:
    s3.put_object(Bucket=pipeline.bucket, Key="data/new.txt", Body=b"12345")
    path = write_config(tmp_path, pipeline)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "extra.txt").write_text("not in S3")

    result = s3pull("sync", "--dry-run", "--config", str(path))

    assert result.returncode == 0, result.stderr
    assert "data: download data/new.txt (5 B)" in result.stdout
    assert "data: delete data/extra.txt" in result.stdout
    assert "data: 1 to download (5 B), 1 to delete, 0 up to date" in result.stdout
    assert sorted(p.name for p in mirror.iterdir()) == ["extra.txt"]


def test_sync_reconciles_and_a_second_sync_has_nothing_to_do(
    tmp_path: Path, pipeline: Pipeline, s3: Any
) -> None:
    for index in range(25):
        s3.put_object(
            Bucket=pipeline.bucket, Key=f"data/dir{index % 3}/f{index}", Body=b"x" * index
        )
    path = write_config(tmp_path, pipeline)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "extra.txt").write_text("not in S3")

    first = s3pull("sync", "--config", str(path))
    assert first.returncode == 0, first.stderr
    assert "25 downloaded, 1 deleted" in first.stderr
    on_disk = {str(p.relative_to(mirror)): p.read_bytes() for p in mirror.rglob("*") if p.is_file()}
    assert on_disk == {f"dir{i % 3}/f{i}": b"x" * i for i in range(25)}

    # Local drift: one file edited, one deleted. The next sync restores exactly those.
    (mirror / "dir0" / "f3").write_bytes(b"edited")
    (mirror / "dir1" / "f4").unlink()
    second = s3pull("sync", "--dry-run", "--config", str(path))
    assert "data: 2 to download (7 B), 0 to delete, 23 up to date" in second.stdout
    third = s3pull("sync", "--config", str(path))
    assert "2 downloaded, 0 deleted, 23 up to date" in third.stderr
    assert (mirror / "dir0" / "f3").read_bytes() == b"xxx"
    assert (mirror / "dir1" / "f4").read_bytes() == b"xxxx"


def test_sync_keeps_extra_files_when_deletions_are_not_mirrored(
    tmp_path: Path, pipeline: Pipeline
) -> None:
    path = write_config(tmp_path, pipeline, delete=False)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "local-only.txt").write_text("mine")
    result = s3pull("sync", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert (mirror / "local-only.txt").read_text() == "mine"


def test_sync_draws_a_progress_bar_on_a_terminal(
    tmp_path: Path, pipeline: Pipeline, s3: Any
) -> None:
    import os
    import pty

    for index in range(5):
        s3.put_object(Bucket=pipeline.bucket, Key=f"data/f{index}", Body=b"y" * 2048)
    path = write_config(tmp_path, pipeline)
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "s3pull", "sync", "--config", str(path)],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env=AGENT_ENV,
    )
    os.close(follower)
    output = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
    assert process.wait(timeout=60) == 0
    os.close(leader)
    text = output.decode()
    assert "\r\x1b[K[" in text  # back to the line's start, erased, redrawn
    assert "5/5 files  10.0 KiB/10.0 KiB" in text
    assert "#" * 30 in text


def test_sync_dry_run_on_a_missing_directory_creates_nothing(
    tmp_path: Path, pipeline: Pipeline, s3: Any
) -> None:
    s3.put_object(Bucket=pipeline.bucket, Key="data/a.txt", Body=b"a")
    result = s3pull("sync", "--dry-run", "--config", str(write_config(tmp_path, pipeline)))
    assert result.returncode == 0, result.stderr
    assert "data: download data/a.txt (1 B)" in result.stdout
    assert not (tmp_path / "mirror").exists()

"""`status` tells the truth, one agent per state directory, and output to a reader that
left: what an operator checks, against a real agent and the moto server."""

from __future__ import annotations

import signal
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conftest import AGENT_ENV, Agent, queue_depth, render_config, wait_until
from conftest import run_s3pull as s3pull
from s3pull.emulator import Pipeline, create_pipeline

RECORD_BATCH = Path(__file__).parent / "commands" / "record_batch.py"


def status(config: Path) -> subprocess.CompletedProcess[str]:
    return s3pull("status", "--config", str(config))


def status_until(config: Path, text: str, what: str) -> subprocess.CompletedProcess[str]:
    """Run `status` until its output holds ``text`` (the daemon rewrites it every 5 s)."""

    def holds() -> subprocess.CompletedProcess[str] | None:
        result = status(config)
        return result if text in result.stdout else None

    return wait_until(holds, what=what)


def mirror_config(tmp_path: Path, pipeline: Pipeline) -> Path:
    config = tmp_path / "s3pull.toml"
    mirror = {
        "name": "data",
        "bucket": pipeline.bucket,
        "prefix": "data/",
        "directory": tmp_path / "mirror",
    }
    config.write_text(render_config(pipeline, tmp_path / "state", [mirror]))
    return config


def test_a_mirror_that_cannot_write_is_failing_until_its_change_applies(
    tmp_path: Path,
    moto_endpoint: str,
    s3: Any,
    start_agent: Callable[..., Agent],
    immutable: Callable[[Path], None],
) -> None:
    # Enough receives that the change keeps failing rather than being dead-lettered.
    pipeline = create_pipeline(moto_endpoint, f"t-{uuid.uuid4().hex[:16]}", max_receive_count=50)
    config = mirror_config(tmp_path, pipeline)
    (tmp_path / "mirror").mkdir()
    immutable(tmp_path / "mirror")
    agent = start_agent(config)
    agent.wait_ready()
    status_until(config, "s3pull: IN SYNC", "an empty mirror in sync")

    s3.put_object(Bucket=pipeline.bucket, Key="data/report.csv", Body=b"a,b\n")
    agent.wait_for_log("data: could not apply ObjectCreated:Put to data/report.csv")
    failing = status_until(config, "s3pull: FAILING", "status to say FAILING")
    assert failing.returncode == 1
    assert "mirror data: 1 change(s) failing" in failing.stdout
    assert "data/report.csv" in failing.stdout
    assert "Operation not permitted" in failing.stdout
    assert "IN SYNC" not in failing.stdout

    subprocess.run(["chattr", "-i", str(tmp_path / "mirror")], check=True)
    # The message comes back by itself and applies now.
    wait_until(lambda: (tmp_path / "mirror" / "report.csv").exists(), timeout=60, what="the retry")
    healed = status_until(config, "s3pull: IN SYNC", "status to say IN SYNC again")
    assert healed.returncode == 0
    assert agent.stop() == 0
    assert "stopped: in sync" in agent.log


def test_a_reconcile_that_left_files_behind_is_failing_until_one_succeeds(
    tmp_path: Path,
    moto_endpoint: str,
    s3: Any,
    start_agent: Callable[..., Agent],
    immutable: Callable[[Path], None],
) -> None:
    # The upload's own event fails too; enough receives that it is not dead-lettered.
    pipeline = create_pipeline(moto_endpoint, f"t-{uuid.uuid4().hex[:16]}", max_receive_count=50)
    s3.put_object(Bucket=pipeline.bucket, Key="data/early.txt", Body=b"early")
    config = mirror_config(tmp_path, pipeline)
    (tmp_path / "mirror").mkdir()
    immutable(tmp_path / "mirror")
    agent = start_agent(config)
    agent.wait_ready()  # every start-up pass left early.txt behind; events still flow
    failing = status_until(config, "s3pull: FAILING", "status to say FAILING")
    assert failing.returncode == 1
    assert "mirror data: the last reconcile could not download 1 file(s)" in failing.stdout
    assert agent.stop() == 0
    # The stop line must not call this in sync.
    stop_line = next(line for line in agent.log.splitlines() if "stopped:" in line)
    assert "in sync" not in stop_line
    assert "failing" in stop_line

    subprocess.run(["chattr", "-i", str(tmp_path / "mirror")], check=True)
    agent = start_agent(config)  # a start reconciles again
    agent.wait_ready()
    assert (tmp_path / "mirror" / "early.txt").read_bytes() == b"early"
    assert status_until(config, "s3pull: IN SYNC", "IN SYNC after the fix").returncode == 0
    assert agent.stop() == 0


def test_a_trigger_whose_command_is_missing_ends_in_dead_letters_status_names(
    tmp_path: Path, pipeline: Pipeline, s3: Any, start_agent: Callable[..., Agent]
) -> None:
    output = tmp_path / "runs.jsonl"
    trigger = {
        "name": "orders",
        "bucket": pipeline.bucket,
        "prefix": "incoming/",
        "marker": "_READY",
        "directory": tmp_path / "batches",
        "command": [str(tmp_path / "no-such-command")],
    }
    config = tmp_path / "s3pull.toml"
    config.write_text(render_config(pipeline, tmp_path / "state", [], [trigger]))
    agent = start_agent(config)
    agent.wait_ready()
    s3.put_object(Bucket=pipeline.bucket, Key="incoming/b1/_READY", Body=b"")
    agent.wait_for_log("orders: batch incoming/b1/ failed")
    failing = status_until(config, "s3pull: FAILING", "status to say FAILING")
    assert failing.returncode == 1
    assert "trigger orders: 1 batch(es) failing" in failing.stdout
    assert "incoming/b1/" in failing.stdout

    # max_receive_count is 2: the second failed receive dead-letters the marker.
    wait_until(
        lambda: queue_depth(pipeline, pipeline.dead_letter_url) == 1,
        timeout=60,
        what="the marker in the dead-letter queue",
    )
    dead = status_until(config, "1 dead-lettered message(s)", "status to name the dead letter")
    assert dead.returncode == 1
    assert "IN SYNC" not in dead.stdout
    assert "s3pull dlq list" in dead.stdout

    # The fix: a command that exists (the agent reloads the file), then a redrive.
    trigger["command"] = [sys.executable, str(RECORD_BATCH), str(output)]
    config.write_text(render_config(pipeline, tmp_path / "state", [], [trigger]))
    agent.wait_for_log("serving the new configuration")
    agent.wait_ready()
    redrive = s3pull("dlq", "redrive", "--config", str(config))
    assert redrive.returncode == 0, redrive.stderr
    agent.wait_for_log("orders: batch incoming/b1/ succeeded")
    healed = status_until(config, "s3pull: IN SYNC", "IN SYNC after the redrive")
    assert healed.returncode == 0
    assert agent.stop() == 0


def test_a_second_agent_on_one_state_directory_is_refused_and_so_is_sync(
    tmp_path: Path, pipeline: Pipeline, s3: Any, start_agent: Callable[..., Agent]
) -> None:
    config = mirror_config(tmp_path, pipeline)
    first = start_agent(config)
    first.wait_ready()
    pid = first.process.pid

    second = start_agent(config)
    assert second.process.wait(60) == 1
    assert f"pid {pid}" in second.log
    assert "ready: polling" not in second.log
    assert first.process.poll() is None

    assert f"(pid {pid}," in status_until(config, "s3pull: IN SYNC", "status").stdout

    s3.put_object(Bucket=pipeline.bucket, Key="data/a.txt", Body=b"a")
    sync = s3pull("sync", "--config", str(config))
    assert sync.returncode == 1
    assert f"pid {pid}" in sync.stderr
    dry_run = s3pull("sync", "--dry-run", "--config", str(config))  # changes nothing
    assert dry_run.returncode == 0, dry_run.stderr

    assert first.stop() == 0
    # Once it is gone (a crash releases the lock the same way), both may run.
    assert s3pull("sync", "--config", str(config)).returncode == 0
    again = start_agent(config)
    again.wait_ready()
    assert again.stop(signal.SIGINT) == 0


def test_output_to_a_reader_that_left_neither_fails_nor_changes_the_exit_status(
    tmp_path: Path, pipeline: Pipeline, start_agent: Callable[..., Agent]
) -> None:
    config = mirror_config(tmp_path, pipeline)
    agent = start_agent(config)
    agent.wait_ready()
    status_until(config, "s3pull: IN SYNC", "status to say IN SYNC")

    def with_reader_gone(*args: str) -> tuple[int, str]:
        # As `s3pull status | head -1` once head has exited: the pipe has no reader.
        process = subprocess.Popen(
            [sys.executable, "-m", "s3pull", *args, "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=AGENT_ENV,
        )
        assert process.stdout is not None and process.stderr is not None
        process.stdout.close()
        stderr = process.stderr.read().decode()
        return process.wait(60), stderr

    for args in (("status",), ("status", "--json"), ("sync", "--dry-run")):
        code, stderr = with_reader_gone(*args)
        assert (code, stderr) == (0, ""), args
    assert agent.stop() == 0
    code, stderr = with_reader_gone("status")
    assert (code, stderr) == (1, "")  # NOT RUNNING, said by the exit status alone

"""Self-healing: local drift is repaired from S3 (watchfiles), and the configuration
reloads on SIGHUP and on a change of the file, keeping the running one when the new one
is broken. Real files, real signals, a real moto pipeline."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conftest import Agent, render_config, wait_until
from s3pull.emulator import Pipeline
from test_agent import queue_depth


def mirror_table(
    pipeline: Pipeline, name: str, prefix: str, directory: Path, delete: bool = True
) -> dict[str, Any]:
    return {
        "name": name,
        "bucket": pipeline.bucket,
        "prefix": prefix,
        "directory": directory,
        "delete": delete,
    }


def write_atomically(path: Path, text: str) -> None:
    """As editors and config managers do: write beside, then rename over."""
    temporary = path.with_name(path.name + ".new")
    temporary.write_text(text)
    os.replace(temporary, path)


def test_local_drift_is_repaired_from_s3(
    tmp_path: Path, pipeline: Pipeline, s3: Any, start_agent: Callable[..., Agent]
) -> None:
    mirror = tmp_path / "mirror"
    keep = tmp_path / "keep"
    config = tmp_path / "s3pull.toml"
    config.write_text(
        render_config(
            pipeline,
            tmp_path / "state",
            [
                mirror_table(pipeline, "data", "data/", mirror),
                mirror_table(pipeline, "keep", "keep/", keep, delete=False),
            ],
        )
    )
    s3.put_object(Bucket=pipeline.bucket, Key="data/edited.txt", Body=b"original")
    s3.put_object(Bucket=pipeline.bucket, Key="data/deleted.txt", Body=b"precious")
    agent = start_agent(config)
    agent.wait_ready()
    # Let the uploads' own events land first, so what follows is repaired as drift.
    agent.wait_for_log("data/edited.txt (ObjectCreated:Put")
    agent.wait_for_log("data/deleted.txt (ObjectCreated:Put")
    wait_until(lambda: queue_depth(pipeline, pipeline.queue_url) == 0, what="queue drained")

    (mirror / "edited.txt").write_bytes(b"tampered")
    (mirror / "deleted.txt").unlink()
    (mirror / "stray.txt").write_bytes(b"not in S3")
    (keep / "mine.txt").write_bytes(b"local only")

    wait_until(lambda: (mirror / "edited.txt").read_bytes() == b"original", what="edit undone")
    wait_until(lambda: (mirror / "deleted.txt").exists(), what="deleted file restored")
    assert (mirror / "deleted.txt").read_bytes() == b"precious"
    wait_until(lambda: not (mirror / "stray.txt").exists(), what="stray file removed")
    agent.wait_for_log("data: deleted data/stray.txt (local drift")
    # delete = false: a local-only file is none of the agent's business.
    assert (keep / "mine.txt").read_bytes() == b"local only"
    # Our own writes are not mistaken for drift: nothing repaired twice.
    assert agent.log.count("downloaded data/edited.txt (local drift") == 1
    assert agent.stop() == 0


def test_reload_on_sighup_adds_and_removes_mirrors_without_restart(
    tmp_path: Path, pipeline: Pipeline, s3: Any, start_agent: Callable[..., Agent]
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    config = tmp_path / "s3pull.toml"
    config.write_text(
        render_config(
            pipeline, tmp_path / "state", [mirror_table(pipeline, "first", "first/", first)]
        )
    )
    s3.put_object(Bucket=pipeline.bucket, Key="second/already.txt", Body=b"there before")
    agent = start_agent(config)
    agent.wait_ready()
    pid = agent.process.pid

    # The file is replaced, then SIGHUP: the new mirror bootstraps and follows events;
    # the removed one no longer does.
    config.write_text(
        render_config(
            pipeline, tmp_path / "state", [mirror_table(pipeline, "second", "second/", second)]
        )
    )
    agent.process.send_signal(signal.SIGHUP)
    agent.wait_for_log("serving the new configuration: 1 mirror(s), 0 trigger(s)")
    wait_until(lambda: (second / "already.txt").exists(), what="new mirror bootstrapped")
    s3.put_object(Bucket=pipeline.bucket, Key="second/new.txt", Body=b"new")
    s3.put_object(Bucket=pipeline.bucket, Key="first/ignored.txt", Body=b"old mirror")
    wait_until(lambda: (second / "new.txt").exists(), what="event for the new mirror")
    agent.wait_for_log("nothing here covers s3://" + pipeline.bucket + "/first/ignored.txt")
    assert not (first / "ignored.txt").exists()
    assert agent.process.pid == pid and agent.process.poll() is None
    assert agent.stop() == 0


def test_reload_on_file_change_and_a_broken_file_keeps_the_running_configuration(
    tmp_path: Path, pipeline: Pipeline, s3: Any, start_agent: Callable[..., Agent]
) -> None:
    mirror = tmp_path / "mirror"
    config = tmp_path / "s3pull.toml"
    good = render_config(
        pipeline, tmp_path / "state", [mirror_table(pipeline, "data", "data/", mirror)]
    )
    config.write_text(good)
    agent = start_agent(config)
    agent.wait_ready()

    write_atomically(config, good.replace("concurrency = 8", "concurrency = 8\nbogus = 1"))
    agent.wait_for_log("configuration reload failed, keeping the running configuration")
    assert "agent.bogus: unknown key" in agent.log
    s3.put_object(Bucket=pipeline.bucket, Key="data/still.txt", Body=b"still working")
    wait_until(lambda: (mirror / "still.txt").exists(), what="the running config still works")

    write_atomically(config, good.replace('prefix = "data/"', 'prefix = "other/"'))
    agent.wait_for_log("serving the new configuration")
    s3.put_object(Bucket=pipeline.bucket, Key="other/moved.txt", Body=b"moved")
    wait_until(lambda: (mirror / "moved.txt").exists(), what="the new prefix followed")
    assert agent.stop() == 0

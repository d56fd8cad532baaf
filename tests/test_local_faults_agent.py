"""Nothing local crashes the daemon, end to end: ``s3pull run`` and ``s3pull sync`` as
child processes, the moto server on loopback with the real S3 -> SNS -> SQS path, real
files, real signals. The in-process half is tests/test_local_faults.py."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import AGENT_ENV, Agent, queue_depth, render_config, run_s3pull, wait_until
from faultproxy import FaultProxy, Rule
from s3pull.emulator import Pipeline


def plant(directory: Path, name: bytes) -> bytes:
    """A file whose name is raw bytes, here not UTF-8; returns its path."""
    path = os.path.join(os.fsencode(directory), name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as file:
        file.write(b"local only")
    return path


def mirror_config(
    tmp_path: Path, pipeline: Pipeline, mirror: Path, endpoint: str | None = None
) -> Path:
    table = {"name": "data", "bucket": pipeline.bucket, "prefix": "data/", "directory": mirror}
    text = render_config(pipeline, tmp_path / "state", [table])
    if endpoint is not None:  # the agent talks through a fault proxy; the test does not
        text = text.replace(f'endpoint_url = "{pipeline.endpoint}"', f'endpoint_url = "{endpoint}"')
    path = tmp_path / "s3pull.toml"
    path.write_text(text)
    return path


@pytest.fixture
def proxy(moto_endpoint: str) -> Iterator[FaultProxy]:
    with FaultProxy(moto_endpoint) as running:
        yield running


def test_names_that_are_not_utf8_never_crash_run_reload_or_sync(
    tmp_path: Path, pipeline: Pipeline, s3: Any, start_agent: Callable[..., Agent]
) -> None:
    mirror = tmp_path / "mirror"
    config = mirror_config(tmp_path, pipeline, mirror)
    s3.put_object(Bucket=pipeline.bucket, Key="data/kept.txt", Body=b"kept")
    at_start = plant(mirror, b"caf\xe9.txt")

    agent = start_agent(config)
    agent.wait_ready()
    assert not os.path.lexists(at_start)  # no S3 key can name it: mirrored away
    assert (mirror / "kept.txt").read_bytes() == b"kept"
    assert "data: deleted data/caf\\xe9.txt (reconcile: not in S3" in agent.log

    # A reload reconciles again, past another one.
    on_reload = plant(mirror, b"sub\xff/x.txt")
    config.write_text(config.read_text().replace("concurrency = 8", "concurrency = 4"))
    agent.process.send_signal(signal.SIGHUP)
    agent.wait_for_log("serving the new configuration")
    agent.wait_ready()
    wait_until(lambda: not os.path.lexists(on_reload), what="the reload's reconcile")
    s3.put_object(Bucket=pipeline.bucket, Key="data/later.txt", Body=b"later")
    wait_until(lambda: (mirror / "later.txt").exists(), what="a later change applied")
    assert agent.process.poll() is None
    assert agent.stop() == 0

    in_sync = plant(mirror, b"\xfe\xfe.bin")
    result = run_s3pull("sync", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert not os.path.lexists(in_sync)
    assert "data/\\xfe\\xfe.bin" in result.stderr


def test_an_extra_file_swapped_for_a_symlink_during_start_up_is_refused(
    tmp_path: Path,
    pipeline: Pipeline,
    s3: Any,
    proxy: FaultProxy,
    start_agent: Callable[..., Agent],
) -> None:
    mirror = tmp_path / "mirror"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_bytes(b"precious")
    config = mirror_config(tmp_path, pipeline, mirror, proxy.url)
    s3.put_object(Bucket=pipeline.bucket, Key="data/slow.txt", Body=b"slow")
    mirror.mkdir()
    (mirror / "extra.txt").write_bytes(b"not in S3")
    # The start-up reconcile downloads first, deletes after: hold the download back and
    # swap the extra file for a symlink in that gap.
    proxy.add(Rule("pass", "s3", "GetObject", key_prefix="data/slow.txt", times=1, delay=3))

    agent = start_agent(config)
    wait_until(lambda: proxy.seen("s3", "GetObject"), what="the start-up download")
    (mirror / "extra.txt").unlink()
    (mirror / "extra.txt").symlink_to(outside / "precious.txt")
    agent.wait_ready()

    assert "refused key 'data/extra.txt': 'extra.txt' is a symlink" in agent.log
    assert (outside / "precious.txt").read_bytes() == b"precious"
    assert (mirror / "extra.txt").is_symlink()
    s3.put_object(Bucket=pipeline.bucket, Key="data/later.txt", Body=b"later")
    wait_until(lambda: (mirror / "later.txt").exists(), what="a later change applied")
    assert agent.stop() == 0

    # The same race in `s3pull sync`: refused, exit 0, nothing outside touched.
    (mirror / "extra.txt").unlink()
    (mirror / "extra.txt").write_bytes(b"not in S3")
    (mirror / "slow.txt").write_bytes(b"drifted")
    seen = proxy.seen("s3", "GetObject")
    proxy.add(Rule("pass", "s3", "GetObject", key_prefix="data/slow.txt", times=1, delay=3))
    sync = subprocess.Popen(
        [sys.executable, "-m", "s3pull", "sync", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=AGENT_ENV,
    )
    wait_until(lambda: proxy.seen("s3", "GetObject") > seen, what="the sync's download")
    (mirror / "extra.txt").unlink()
    (mirror / "extra.txt").symlink_to(outside / "precious.txt")
    _out, err = sync.communicate(timeout=60)
    assert sync.returncode == 0, err
    assert "'extra.txt' is a symlink" in err
    assert (outside / "precious.txt").read_bytes() == b"precious"


def test_a_deleted_mirror_directory_is_recreated_reconciled_and_watched_again(
    tmp_path: Path, pipeline: Pipeline, s3: Any, start_agent: Callable[..., Agent]
) -> None:
    mirror = tmp_path / "mirror"
    config = mirror_config(tmp_path, pipeline, mirror)
    s3.put_object(Bucket=pipeline.bucket, Key="data/old/one.txt", Body=b"one")
    agent = start_agent(config)
    agent.wait_ready()
    wait_until(lambda: (mirror / "old" / "one.txt").exists(), what="the start-up reconcile")

    shutil.rmtree(mirror)
    s3.put_object(Bucket=pipeline.bucket, Key="data/new.txt", Body=b"new")

    # The change recreates the directory and lands; the rest comes back with a reconcile.
    wait_until(lambda: (mirror / "new.txt").exists(), what="the change after the deletion")
    wait_until(lambda: (mirror / "old" / "one.txt").exists(), what="the lost file restored")
    assert (mirror / "old" / "one.txt").read_bytes() == b"one"
    agent.wait_for_log("data: directory")  # said so
    # Watched again: local drift in the new directory is repaired.
    agent.wait_for_log("is back: reconciling it")
    agent.wait_for_log("data: reconciled")
    (mirror / "new.txt").write_bytes(b"tampered")
    wait_until(lambda: (mirror / "new.txt").read_bytes() == b"new", what="drift repaired")
    wait_until(lambda: queue_depth(pipeline, pipeline.queue_url) == 0, what="queue drained")
    assert queue_depth(pipeline, pipeline.dead_letter_url) == 0  # nothing dead-lettered
    assert agent.stop() == 0


def test_a_mirror_directory_that_cannot_be_made_does_not_stop_the_others(
    tmp_path: Path, pipeline: Pipeline, s3: Any, start_agent: Callable[..., Agent]
) -> None:
    # Review finding: one such directory made the daemon exit 1 at every start.
    (tmp_path / "a-file").write_text("where the second mirror's parent should be")
    good = {
        "name": "data",
        "bucket": pipeline.bucket,
        "prefix": "data/",
        "directory": tmp_path / "m",
    }
    bad = {
        "name": "other",
        "bucket": pipeline.bucket,
        "prefix": "other/",
        "directory": tmp_path / "a-file" / "m",
    }
    config = tmp_path / "s3pull.toml"
    config.write_text(render_config(pipeline, tmp_path / "state", [good, bad]))
    agent = start_agent(config)
    agent.wait_ready()

    s3.put_object(Bucket=pipeline.bucket, Key="data/x.txt", Body=b"x")
    wait_until(lambda: (tmp_path / "m" / "x.txt").exists(), what="the good mirror's change")
    assert "cannot be used, its changes wait" in agent.log
    assert agent.process.poll() is None
    assert agent.stop() == 0

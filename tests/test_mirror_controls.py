"""Mirror controls (issue 15): include/exclude filters, the mass-deletion guard and the
periodic reconcile, against the moto server with real agents and real `s3pull sync`."""

from __future__ import annotations

import json
import socket
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import Agent, queue_depth, render_config, run_s3pull, wait_until
from faultproxy import FaultProxy
from faults_conftest import through
from s3pull.emulator import NOTIFIED_EVENTS, Pipeline, client
from s3pull.guard import DeleteLimit, held_back_reason

EXCLUDE = ["**/*.tmp", "drafts/**"]


@pytest.fixture
def proxy(moto_endpoint: str) -> Iterator[FaultProxy]:
    with FaultProxy(moto_endpoint) as running:
        yield running


def write_config(tmp_path: Path, pipeline: Pipeline, **mirror: Any) -> Path:
    config = tmp_path / "s3pull.toml"
    settings = {
        "name": "data",
        "bucket": pipeline.bucket,
        "prefix": "data/",
        "directory": tmp_path / "mirror",
        **mirror,
    }
    config.write_text(render_config(pipeline, tmp_path / "state", [settings]))
    return config


def put(s3: Any, pipeline: Pipeline, key: str, body: bytes) -> None:
    s3.put_object(Bucket=pipeline.bucket, Key=key, Body=body)


def files(root: Path) -> dict[str, bytes]:
    found = sorted(p for p in root.rglob("*") if p.is_file())
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in found}


def notifications_off(s3: Any, pipeline: Pipeline) -> None:
    """What a broken bucket notification is to the agent: changes that send no event."""
    s3.put_bucket_notification_configuration(Bucket=pipeline.bucket, NotificationConfiguration={})


def notifications_on(s3: Any, pipeline: Pipeline) -> None:
    s3.put_bucket_notification_configuration(
        Bucket=pipeline.bucket,
        NotificationConfiguration={
            "TopicConfigurations": [{"TopicArn": pipeline.topic_arn, "Events": NOTIFIED_EVENTS}]
        },
    )


def status_json(config: Path) -> tuple[int, dict[str, Any]]:
    result = run_s3pull("status", "--json", "--config", str(config))
    return result.returncode, json.loads(result.stdout)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- include / exclude ------------------------------------------------------------------


def test_filtered_keys_are_neither_downloaded_nor_deleted_and_their_events_are_ignored(
    tmp_path: Path, pipeline: Pipeline, s3: Any, start_agent: Callable[..., Agent]
) -> None:
    for key in ("keep.txt", "sub/keep.txt", "a.tmp", "sub/b.tmp", "drafts/d.txt"):
        put(s3, pipeline, f"data/{key}", key.encode())
    mirror = tmp_path / "mirror"
    # Files S3 does not hold: the excluded ones are left alone, the other one deleted.
    for name in ("drafts/mine.txt", "old.tmp", "stale.txt"):
        (mirror / name).parent.mkdir(parents=True, exist_ok=True)
        (mirror / name).write_bytes(b"local " + name.encode())
    config = write_config(tmp_path, pipeline, exclude=EXCLUDE)

    dry = run_s3pull("sync", "--dry-run", "--config", str(config))
    assert dry.returncode == 0, dry.stderr
    assert "2 to download" in dry.stdout and "1 to delete" in dry.stdout
    assert "3 left out by include/exclude, 2 local file(s) they leave out left alone" in (
        dry.stdout
    )
    assert ".tmp" not in dry.stdout and "drafts" not in dry.stdout

    agent = start_agent(config)
    agent.wait_ready()
    assert files(mirror) == {
        "keep.txt": b"keep.txt",
        "sub/keep.txt": b"sub/keep.txt",
        "drafts/mine.txt": b"local drafts/mine.txt",
        "old.tmp": b"local old.tmp",
    }
    assert agent.log.count("leaving alone 2 local file(s)") == 1

    # Events for excluded keys: acknowledged, ignored, their local files untouched.
    put(s3, pipeline, "data/new.tmp", b"x")
    put(s3, pipeline, "data/drafts/e.txt", b"x")
    s3.delete_object(Bucket=pipeline.bucket, Key="data/sub/b.tmp")
    put(s3, pipeline, "data/old.tmp", b"from S3")
    s3.delete_object(Bucket=pipeline.bucket, Key="data/old.tmp")
    put(s3, pipeline, "data/c.txt", b"c")
    wait_until(lambda: (mirror / "c.txt").exists(), what="c.txt, uploaded last")
    agent.wait_for_log("data/old.tmp is left out by include/exclude, ignoring", count=2)
    wait_until(lambda: queue_depth(pipeline, pipeline.queue_url) == 0, what="every message acked")
    assert "data/new.tmp is left out by include/exclude" in agent.log
    assert not (mirror / "new.tmp").exists() and not (mirror / "drafts/e.txt").exists()
    assert (mirror / "old.tmp").read_bytes() == b"local old.tmp"

    # Local drift: an excluded file edited or made is not "repaired"; a kept one is.
    (mirror / "old.tmp").write_bytes(b"edited")
    (mirror / "drafts/more.txt").write_bytes(b"mine too")
    (mirror / "keep.txt").unlink()
    wait_until(lambda: (mirror / "keep.txt").exists(), what="keep.txt put back from S3")
    assert (mirror / "old.tmp").read_bytes() == b"edited"
    assert (mirror / "drafts/more.txt").read_bytes() == b"mine too"
    assert agent.stop() == 0
    assert agent.log.count("leaving alone 2 local file(s)") == 1
    assert "Traceback" not in agent.log


def test_an_invalid_pattern_is_a_configuration_error(tmp_path: Path, pipeline: Pipeline) -> None:
    config = write_config(tmp_path, pipeline, include=["assets/**", "a\\"])
    result = run_s3pull("sync", "--config", str(config))
    assert result.returncode == 78
    assert f"{config}: mirror[0].include[1]: is not a valid glob pattern" in result.stderr


# -- max_delete ---------------------------------------------------------------------------


def test_a_mass_deletion_is_held_back_until_an_operator_allows_it(
    tmp_path: Path, pipeline: Pipeline, s3: Any, start_agent: Callable[..., Agent]
) -> None:
    for i in range(10):
        put(s3, pipeline, f"data/f{i}.txt", b"x")
    mirror = tmp_path / "mirror"
    config = write_config(tmp_path, pipeline, max_delete="20%")
    assert run_s3pull("sync", "--config", str(config)).returncode == 0
    assert len(files(mirror)) == 10

    # Three of ten deleted (30% > 20%), one uploaded, without events: only a reconcile sees.
    notifications_off(s3, pipeline)
    for i in range(3):
        s3.delete_object(Bucket=pipeline.bucket, Key=f"data/f{i}.txt")
    put(s3, pipeline, "data/new.txt", b"new")
    held = run_s3pull("sync", "--quiet", "--config", str(config))
    assert held.returncode == 1
    assert "holding back 3 deletion(s), nothing deleted: 3 of 10 file(s) is more than" in (
        held.stderr
    )
    assert "--allow-mass-delete" in held.stderr
    assert len(files(mirror)) == 11  # the download went ahead, nothing was deleted
    dry = run_s3pull("sync", "--dry-run", "--config", str(config))
    assert "data: held back: delete data/f0.txt" in dry.stdout
    allowed = run_s3pull("sync", "--allow-mass-delete", "--config", str(config))
    assert allowed.returncode == 0, allowed.stderr
    assert sorted(files(mirror)) == [*(f"f{i}.txt" for i in range(3, 10)), "new.txt"]

    # The daemon: an empty listing of a mirror that holds files is always held back,
    # whatever max_delete says; status and metrics say so until an operator confirms.
    for key in [o["Key"] for o in s3.list_objects_v2(Bucket=pipeline.bucket)["Contents"]]:
        s3.delete_object(Bucket=pipeline.bucket, Key=key)
    # The uploads' own events are still queued (only `sync` ran): each would delete its
    # file on its own, as event deletions do. Gone, as if consumed long ago.
    client(pipeline.endpoint, "sqs").purge_queue(QueueUrl=pipeline.queue_url)
    port = free_port()
    config.write_text(
        config.read_text().replace('max_delete = "20%"\n', "")
        + f'[metrics]\nlisten = "127.0.0.1:{port}"\n'
    )
    agent = start_agent(config)
    agent.wait_ready()
    assert "holding back 8 deletion(s), nothing deleted: S3 listed no object" in agent.log
    assert len(files(mirror)) == 8

    def held_in_status() -> tuple[int, dict[str, Any]] | None:
        code, report = status_json(config)
        return (code, report) if report["verdict"] == "HELD BACK" else None

    code, report = wait_until(held_in_status, what="status HELD BACK")
    assert code == 1
    assert any("8 deletion(s) held back" in problem for problem in report["problems"])
    text = run_s3pull("status", "--config", str(config)).stdout
    assert "s3pull sync --allow-mass-delete" in text
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        metrics = response.read().decode()
    assert 's3pull_deletions_held_back{mirror="data"} 8.0' in metrics
    beside = run_s3pull("sync", "--allow-mass-delete", "--config", str(config))
    assert beside.returncode == 1 and "stop it first" in beside.stderr
    assert len(files(mirror)) == 8
    assert agent.stop() == 0

    assert run_s3pull("sync", "--allow-mass-delete", "--config", str(config)).returncode == 0
    assert files(mirror) == {}


@pytest.mark.parametrize(
    ("limit", "deletions", "files", "listed", "held"),
    [
        (DeleteLimit(count=3), 3, 10, 7, None),
        (DeleteLimit(count=3), 4, 10, 6, "4 of 10 file(s) is more than max_delete = 3"),
        (DeleteLimit(count=0), 1, 10, 9, "1 of 10 file(s) is more than max_delete = 0"),
        (DeleteLimit(percent=10), 1, 10, 9, None),
        (DeleteLimit(percent=10), 1, 9, 8, 'is more than max_delete = "10%"'),  # 11%
        (DeleteLimit(percent=12.5), 1, 8, 7, None),
        (None, 900, 1000, 100, None),  # without max_delete only an empty listing is held
        (None, 5, 5, 0, "S3 listed no object for a mirror holding 5 file(s)"),
        (DeleteLimit(percent=100), 5, 5, 0, "S3 listed no object"),
        (None, 0, 0, 0, None),  # an empty mirror of an empty prefix: nothing to hold
    ],
)
def test_when_deletions_are_held_back(
    limit: DeleteLimit | None, deletions: int, files: int, listed: int, held: str | None
) -> None:
    reason = held_back_reason(limit, deletions, files, listed)
    assert (reason is None) == (held is None)
    assert held is None or (reason is not None and held in reason)


def test_event_driven_deletions_are_not_counted_against_max_delete(
    tmp_path: Path, pipeline: Pipeline, s3: Any, start_agent: Callable[..., Agent]
) -> None:
    for i in range(4):
        put(s3, pipeline, f"data/f{i}.txt", b"x")
    mirror = tmp_path / "mirror"
    agent = start_agent(write_config(tmp_path, pipeline, max_delete=1))
    agent.wait_ready()
    wait_until(lambda: len(files(mirror)) == 4, what="four files")
    for i in range(4):
        s3.delete_object(Bucket=pipeline.bucket, Key=f"data/f{i}.txt")
    wait_until(lambda: files(mirror) == {}, what="every deletion applied")
    assert "holding back" not in agent.log


# -- reconcile_interval -------------------------------------------------------------------


def test_a_periodic_reconcile_lists_only_when_in_sync_and_repairs_a_missed_change(
    tmp_path: Path,
    pipeline: Pipeline,
    s3: Any,
    proxy: FaultProxy,
    start_agent: Callable[..., Agent],
) -> None:
    for i in range(5):
        put(s3, pipeline, f"data/f{i}.txt", b"v1")
    mirror = tmp_path / "mirror"
    config = write_config(tmp_path, through(pipeline, proxy.url), reconcile_interval="2s")
    agent = start_agent(config)
    agent.wait_ready()
    assert len(files(mirror)) == 5
    agent.wait_for_log("data: periodic reconcile", count=1)
    gets, lists = proxy.seen("s3", "GetObject"), proxy.seen("s3", "ListObjectsV2")
    agent.wait_for_log("data: periodic reconcile", count=3)
    # In sync: two more listings, and not one GET (nor a HEAD).
    assert proxy.seen("s3", "GetObject") == gets
    assert proxy.seen("s3", "HeadObject") == 0
    assert proxy.seen("s3", "ListObjectsV2") >= lists + 2
    code, report = status_json(config)
    assert code == 0, report["problems"]
    schedule = report["daemon"]["reconciles"]["data"]
    assert schedule["interval"] == 2 and schedule["next_at"] > schedule["last_at"]
    assert "reconcile     data: last " in run_s3pull("status", "--config", str(config)).stdout

    # Changes S3 sends no notification for: a new file, a same-size overwrite, a delete.
    notifications_off(s3, pipeline)
    put(s3, pipeline, "data/missed.txt", b"missed")
    put(s3, pipeline, "data/f0.txt", b"v2")
    s3.delete_object(Bucket=pipeline.bucket, Key="data/f1.txt")
    notifications_on(s3, pipeline)
    expected = {f"f{i}.txt": b"v1" for i in range(2, 5)}
    expected |= {"f0.txt": b"v2", "missed.txt": b"missed"}
    wait_until(lambda: files(mirror) == expected, what="the missed changes repaired")
    # One GET per changed object; the deletion was confirmed by a HEAD first.
    assert proxy.seen("s3", "GetObject") == gets + 2
    assert proxy.seen("s3", "HeadObject", "data/f1.txt") == 1
    assert agent.stop() == 0


def test_a_file_in_the_way_of_a_new_key_is_never_deleted_when_the_filters_leave_it_out(
    tmp_path: Path, pipeline: Pipeline, s3: Any, start_agent: Callable[..., Agent]
) -> None:
    # S3 gains the file key data/a while the mirror holds a/conf.local, which exclude
    # leaves alone: the new key is refused, the local file stays.
    config = write_config(tmp_path, pipeline, exclude=["**/*.local"])
    local = tmp_path / "mirror" / "a" / "conf.local"
    local.parent.mkdir(parents=True)
    local.write_bytes(b"ours")
    agent = start_agent(config)
    agent.wait_ready()
    put(s3, pipeline, "data/a", b"a file where our directory is")
    put(s3, pipeline, "data/later.txt", b"later")  # the barrier: data/a was handled first
    agent.wait_for_log("downloaded data/later.txt")
    wait_until(lambda: queue_depth(pipeline, pipeline.queue_url) == 0, what="queue drained")
    assert local.read_bytes() == b"ours"
    assert "refused key 'data/a'" in agent.log
    assert agent.stop() == 0

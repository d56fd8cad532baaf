"""Faults between the agent and AWS, injected by ``faultproxy.FaultProxy`` on loopback:
the agent recovers from each without a restart, backs off, says what is happening, and
ends with the directory equal to S3.

- S3 ``503 SlowDown`` / ``500 InternalError`` bursts on GET and HEAD: botocore's retries
  absorb short ones, a longer one on one key fails the change, whose message comes back
  (never deleted, never dead-lettered) and applies.
- Connections reset mid-body: the agent retries the whole download (botocore does not),
  then hands the message back when that is not enough; no temporary file remains.
- Added latency, one GET longer than the visibility timeout: the message is kept
  invisible, so the object is fetched exactly once.
- SQS ``500`` for a while, and an SQS blackhole of (at least) 60 s: the poller backs off
  (1 s, 2 s, ...), the log and systemd STATUS say so, and events queued meanwhile apply
  once SQS answers again, in the same process.
- Disk full (a 1 MiB tmpfs): the change fails with a clear ENOSPC error, the message is
  kept, no temporary file remains, and the change applies once space is freed.
- Objects gone before their event is handled (404): handled once, message deleted,
  never retried; a trigger marker that is gone skips its batch the same way.

Each test prints its figures (``pytest -s`` shows them).
"""

from __future__ import annotations

import json
import os
import random
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import Agent, run_s3pull, wait_until
from faultproxy import FaultProxy, Rule
from faults_conftest import (
    NotifySocket,
    dead_letters,
    digest,
    local_tree,
    s3_tree,
    temp_files,
    through,
    write_config,
)
from s3pull.emulator import Pipeline, create_pipeline
from test_agent import queue_depth, s3_event

RECORD_BATCH = Path(__file__).parent / "commands" / "record_batch.py"


@pytest.fixture
def proxy(moto_endpoint: str) -> Iterator[FaultProxy]:
    with FaultProxy(moto_endpoint) as running:
        yield running


@pytest.fixture
def patient(moto_endpoint: str) -> Pipeline:
    """A pipeline whose queue lets a message fail up to 10 times before dead-lettering."""
    return create_pipeline(moto_endpoint, f"f-{uuid.uuid4().hex[:16]}", max_receive_count=10)


def start_mirroring(
    tmp_path: Path,
    pipeline: Pipeline,
    proxy: FaultProxy,
    start_agent: Callable[..., Agent],
    directory: Path | None = None,
    env: dict[str, str] | None = None,
) -> tuple[Agent, Path]:
    """An agent mirroring ``data/`` of the pipeline's bucket, all its traffic proxied."""
    mirror = directory or tmp_path / "mirror"
    config = write_config(
        tmp_path / "s3pull.toml",
        through(pipeline, proxy.url),
        tmp_path / "state",
        [{"name": "data", "bucket": pipeline.bucket, "prefix": "data/", "directory": mirror}],
    )
    agent = start_agent(config, env)
    agent.wait_ready()
    return agent, mirror


def converge(s3: Any, pipeline: Pipeline, mirror: Path, timeout: float = 90) -> dict[str, str]:
    """Wait until the mirror equals S3 byte for byte and the queue is empty."""
    expected = s3_tree(s3, pipeline.bucket, "data/")
    wait_until(lambda: local_tree(mirror) == expected, timeout, "the mirror to equal S3")
    wait_until(
        lambda: queue_depth(pipeline, pipeline.queue_url) == 0, timeout, "the queue to drain"
    )
    assert temp_files(mirror) == []
    assert dead_letters(pipeline.endpoint, pipeline.dead_letter_url) == []
    return expected


def figures(name: str, **values: object) -> None:
    print(f"\n[figures] {name}: " + ", ".join(f"{k}={v}" for k, v in values.items()))


def test_s3_error_bursts_are_retried_until_the_mirror_equals_s3(
    s3: Any,
    patient: Pipeline,
    proxy: FaultProxy,
    tmp_path: Path,
    start_agent: Callable[..., Agent],
) -> None:
    agent, mirror = start_mirroring(tmp_path, patient, proxy, start_agent)
    # Seven in a row on one key outlast botocore's six attempts (max_attempts=5 counts
    # retries): that change fails and its message must come back. The bursts on every
    # GET and HEAD are absorbed.
    hot = proxy.add(
        Rule("error", "s3", "GetObject", key_prefix="data/hot", times=7, code="SlowDown")
    )
    bursts = [
        proxy.add(Rule("error", "s3", "GetObject", times=10, status=503, code="SlowDown")),
        proxy.add(Rule("error", "s3", "GetObject", times=6, status=500, code="InternalError")),
        proxy.add(Rule("error", "s3", "HeadObject", times=4, status=503, code="SlowDown")),
        # Connections dropped before any answer: botocore retries those too.
        proxy.add(Rule("refuse", "s3", "GetObject", times=4)),
    ]
    rng = random.Random(6)
    for index in range(8):
        s3.put_object(Bucket=patient.bucket, Key=f"data/f{index}", Body=rng.randbytes(2000))
    s3.put_object(Bucket=patient.bucket, Key="data/hot", Body=b"hot content")
    s3.put_object(Bucket=patient.bucket, Key="data/f0", Body=b"overwritten")
    s3.delete_object(Bucket=patient.bucket, Key="data/f1")

    expected = converge(s3, patient, mirror)
    assert "f1" not in expected
    failed = [
        line
        for line in agent.log.splitlines()
        if "could not apply ObjectCreated:Put to data/hot, will retry" in line
    ]
    assert failed and all("SlowDown" in line for line in failed), agent.log
    assert all(rule.hits == rule.times for rule in [hot, *bursts])
    assert agent.process.poll() is None
    figures(
        "s3 error bursts",
        errors_injected=proxy.faults["error"],
        connections_dropped=proxy.faults["refuse"],
        get_requests=proxy.seen("s3", "GetObject"),
        head_requests=proxy.seen("s3", "HeadObject"),
        changes_failed_then_retried=len(failed),
        objects=len(expected),
    )
    assert agent.stop() == 0


def test_resets_mid_body_retry_the_whole_download(
    s3: Any,
    patient: Pipeline,
    proxy: FaultProxy,
    tmp_path: Path,
    start_agent: Callable[..., Agent],
) -> None:
    agent, mirror = start_mirroring(tmp_path, patient, proxy, start_agent)
    # Four resets on one key outlast the agent's three whole-download attempts: the
    # message comes back. Four more are spread over the other keys.
    proxy.add(Rule("reset", "s3", "GetObject", key_prefix="data/thrice", times=4, fraction=0.5))
    proxy.add(Rule("reset", "s3", "GetObject", key_prefix="data/r", times=4, fraction=0.3))
    rng = random.Random(61)
    for index in range(4):
        s3.put_object(Bucket=patient.bucket, Key=f"data/r{index}", Body=rng.randbytes(1 << 20))
    s3.put_object(Bucket=patient.bucket, Key="data/thrice", Body=rng.randbytes(1 << 20))

    expected = converge(s3, patient, mirror)
    log = agent.log
    retried = re.findall(r"retrying download of (\S+) after attempt (\d) failed", log)
    assert ("data/thrice", "1") in retried and ("data/thrice", "2") in retried, log
    assert "could not apply ObjectCreated:Put to data/thrice, will retry" in log
    assert proxy.faults["reset"] == 8
    figures(
        "resets mid-body",
        resets_injected=proxy.faults["reset"],
        whole_downloads_retried_in_process=len(retried),
        messages_handed_back=log.count("could not apply ObjectCreated:Put"),
        bytes_mirrored=sum(os.path.getsize(mirror / name) for name in expected),
    )
    assert agent.stop() == 0


def test_added_latency_never_fetches_an_object_twice(
    s3: Any,
    patient: Pipeline,
    proxy: FaultProxy,
    tmp_path: Path,
    start_agent: Callable[..., Agent],
) -> None:
    agent, mirror = start_mirroring(tmp_path, patient, proxy, start_agent)
    # One GET slower than the whole visibility timeout (2 s): the heartbeat must keep
    # its message invisible, or a second copy would be received and fetched again.
    proxy.add(Rule("pass", "s3", "GetObject", key_prefix="data/slow", times=1, delay=5.0))
    proxy.add(Rule("pass", delay=0.3))  # everything else, S3 and SQS alike
    for index in range(5):
        s3.put_object(Bucket=patient.bucket, Key=f"data/l{index}", Body=f"l{index}".encode())
    s3.put_object(Bucket=patient.bucket, Key="data/slow", Body=b"slow")

    converge(s3, patient, mirror)
    log = agent.log
    assert proxy.seen("s3", "GetObject", key="data/slow") == 1
    assert log.count("downloaded data/slow") == 1
    assert "unchanged data/slow" not in log
    assert not re.search(r"^\S+ (WARNING|ERROR)", log, re.MULTILINE), log
    figures(
        "latency",
        delayed_requests=proxy.seen(),
        slow_get_seconds=5.0,
        visibility_timeout=2,
        gets_of_slow_object=proxy.seen("s3", "GetObject", key="data/slow"),
    )
    assert agent.stop() == 0


def backoffs(log: str) -> list[int]:
    return [int(s) for s in re.findall(r"SQS receive from \S+ failed, retrying in (\d+) s", log)]


def test_sqs_errors_are_backed_off_and_reported(
    s3: Any,
    patient: Pipeline,
    proxy: FaultProxy,
    tmp_path: Path,
    start_agent: Callable[..., Agent],
) -> None:
    notify = NotifySocket()
    try:
        agent, mirror = start_mirroring(
            tmp_path, patient, proxy, start_agent, env={"NOTIFY_SOCKET": notify.address}
        )
        pid = agent.process.pid
        # A single 500: botocore's own retry absorbs it (SQS gets 2 attempts), the agent
        # says nothing.
        burst = proxy.add(Rule("error", "sqs", "ReceiveMessage", times=1, status=500))
        wait_until(lambda: burst.hits == 1, what="the burst to be spent")
        s3.put_object(Bucket=patient.bucket, Key="data/after-burst", Body=b"burst")
        wait_until(lambda: (mirror / "after-burst").exists(), what="a change after the burst")
        assert backoffs(agent.log) == []

        # An error botocore does not retry (the instance role losing sqs:ReceiveMessage
        # for a while): the agent backs off itself, 1 s, 2 s, 4 s, and says so.
        outage = proxy.add(Rule("error", "sqs", status=403, code="AccessDenied"))
        started = time.monotonic()
        s3.put_object(Bucket=patient.bucket, Key="data/during-outage", Body=b"queued")
        agent.wait_for_log("failed, retrying in", timeout=60, count=3)
        outage.end()
        lasted = time.monotonic() - started
        converge(s3, patient, mirror)
        agent.wait_for_log(f"SQS receive from {patient.queue_url} works again")
        waits = backoffs(agent.log)
        assert waits[:3] == [1, 2, 4], agent.log
        assert "AccessDenied" in agent.log
        statuses = notify.statuses()
        assert any(s.startswith("backing off: SQS receive failed") for s in statuses)
        wait_until(lambda: notify.statuses()[-1].startswith("in sync"), what="STATUS in sync")
        assert agent.process.pid == pid and agent.process.poll() is None
        figures(
            "sqs errors",
            absorbed_500s=burst.hits,
            outage_seconds=round(lasted, 1),
            errors_injected=proxy.faults["error"],
            agent_backoffs=waits,
        )
        assert agent.stop() == 0
    finally:
        notify.close()


def test_a_notification_socket_nobody_reads_never_stalls_the_agent(
    s3: Any,
    patient: Pipeline,
    proxy: FaultProxy,
    tmp_path: Path,
    start_agent: Callable[..., Agent],
) -> None:
    # systemd reads its notification socket from PID 1's event loop; while it is busy,
    # the socket's queue fills (net.unix.max_dgram_qlen datagrams). sd_notify is a
    # courtesy: a full queue must cost a lost STATUS line, never the agent's event loop.
    address = f"@s3pull-test-{uuid.uuid4().hex}"
    with (
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as busy,
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as filler,
    ):
        busy.bind("\0" + address[1:])
        filler.setblocking(False)
        queued = 0
        for _ in range(100_000):
            try:
                filler.sendto(b"STATUS=filler", "\0" + address[1:])
            except BlockingIOError:
                break
            queued += 1
        agent, mirror = start_mirroring(
            tmp_path, patient, proxy, start_agent, env={"NOTIFY_SOCKET": address}
        )
        s3.put_object(Bucket=patient.bucket, Key="data/while-systemd-is-busy", Body=b"ok")
        converge(s3, patient, mirror)
        figures("busy notify socket", datagrams_queued_before_start=queued)
        assert agent.stop() == 0


def test_sqs_blackhole_of_60_seconds_is_survived_without_a_restart(
    s3: Any,
    patient: Pipeline,
    proxy: FaultProxy,
    tmp_path: Path,
    start_agent: Callable[..., Agent],
) -> None:
    notify = NotifySocket()
    try:
        agent, mirror = start_mirroring(
            tmp_path, patient, proxy, start_agent, env={"NOTIFY_SOCKET": notify.address}
        )
        pid = agent.process.pid
        s3.put_object(Bucket=patient.bucket, Key="data/before", Body=b"before")
        wait_until(lambda: (mirror / "before").exists(), what="a change before the blackhole")

        # Requests are read and never answered: only the client's read timeout (wait
        # time + 10 s) and botocore's six attempts end each one.
        blackhole = proxy.add(Rule("blackhole", "sqs"))
        started = time.monotonic()
        # The long poll in flight when it began still answers: wait until it is spent.
        wait_until(lambda: blackhole.hits > 0, what="the first swallowed request")
        s3.put_object(Bucket=patient.bucket, Key="data/during-1", Body=b"one")
        s3.put_object(Bucket=patient.bucket, Key="data/before", Body=b"overwritten")
        s3.put_object(Bucket=patient.bucket, Key="data/during-2", Body=b"two")
        s3.delete_object(Bucket=patient.bucket, Key="data/during-2")
        # 60 s, or longer until the agent has reported it: botocore's own six attempts
        # take 66-97 s before the agent hears of the failure.
        wait_until(lambda: time.monotonic() - started >= 60, timeout=70, what="60 s")
        agent.wait_for_log("SQS receive from", timeout=60)
        blackhole.end()
        lasted = time.monotonic() - started
        assert (mirror / "before").read_bytes() == b"before", "nothing applied while cut off"

        expected = converge(s3, patient, mirror)
        agent.wait_for_log(f"SQS receive from {patient.queue_url} works again", timeout=60)
        assert expected.keys() == {"before", "during-1"}
        assert backoffs(agent.log), agent.log
        assert any(s.startswith("backing off: SQS receive failed") for s in notify.statuses())
        assert agent.process.pid == pid and agent.process.poll() is None
        figures(
            "sqs blackhole",
            blackhole_seconds=round(lasted, 1),
            requests_swallowed=proxy.faults["blackhole"],
            agent_backoffs=backoffs(agent.log),
            recovered_after_seconds=round(time.monotonic() - started - lasted, 1),
        )
        assert agent.stop() == 0
    finally:
        notify.close()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs. Requested before ``start_agent`` so it is unmounted after the agents
    are gone. Mounting needs root; a failure to mount fails the test."""
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], check=True)
    try:
        yield disk
    finally:
        if subprocess.run(["umount", str(disk)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(disk)], check=True)


def test_disk_full_keeps_the_message_until_space_is_freed(
    small_disk: Path,
    s3: Any,
    patient: Pipeline,
    proxy: FaultProxy,
    tmp_path: Path,
    start_agent: Callable[..., Agent],
) -> None:
    agent, mirror = start_mirroring(
        tmp_path, patient, proxy, start_agent, directory=small_disk / "mirror"
    )
    filler = small_disk / "filler"  # beside the mirror, on the same file system
    filler.write_bytes(b"\0" * (700 << 10))
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    big = random.Random(5).randbytes(600 << 10)
    assert len(big) > free
    s3.put_object(Bucket=patient.bucket, Key="data/big.bin", Body=big)
    s3.put_object(Bucket=patient.bucket, Key="data/small.txt", Body=b"fits")

    agent.wait_for_log("could not apply ObjectCreated:Put to data/big.bin")

    def attempts() -> int:
        """How often big.bin failed, as `status` counts it: the log says a cause once a
        minute, not once per failure (issue 16)."""
        result = run_s3pull("status", "--json", "--config", str(agent.config))
        failing = (json.loads(result.stdout)["daemon"] or {}).get("failing", {})
        examples = failing.get("data", {}).get("examples", [])
        return sum(int(e["attempts"]) for e in examples if e["key"] == "data/big.bin")

    failures = wait_until(lambda: attempts() >= 2 and attempts(), what="the message to fail again")
    failed_lines = [
        line
        for line in agent.log.splitlines()
        if "could not apply ObjectCreated:Put to data/big.bin" in line
    ]
    assert len(failed_lines) == 1, failed_lines  # the first of its cause, in full
    assert "No space left on device" in failed_lines[0]
    assert f"'{mirror}/" in failed_lines[0], "the whole path, not a fragment"
    assert (mirror / "small.txt").read_bytes() == b"fits", "other changes still apply"
    assert not (mirror / "big.bin").exists()
    assert temp_files(small_disk) == []
    # The failed change is kept (its neighbour's deletion may still be on its way).
    wait_until(lambda: queue_depth(patient, patient.queue_url) == 1, what="one message kept")

    filler.unlink()
    wait_until(
        lambda: (mirror / "big.bin").exists() and digest((mirror / "big.bin").read_bytes()),
        timeout=60,
        what="big.bin after space was freed",
    )
    assert (mirror / "big.bin").read_bytes() == big
    converge(s3, patient, mirror)
    figures(
        "disk full",
        disk_bytes=1 << 20,
        free_bytes_when_full=free,
        object_bytes=len(big),
        failed_attempts_before_freeing=failures,
    )
    assert agent.stop() == 0


def test_objects_gone_before_their_event_is_handled_cost_one_request(
    s3: Any,
    sqs: Any,
    pipeline: Pipeline,
    proxy: FaultProxy,
    tmp_path: Path,
    start_agent: Callable[..., Agent],
) -> None:
    # Events queue up while no agent runs; by the time they are handled, the objects
    # are gone. max_receive_count is 2: a message retried even once more would reach
    # the dead-letter queue.
    s3.put_object(Bucket=pipeline.bucket, Key="data/gone-1", Body=b"short-lived")
    s3.delete_object(Bucket=pipeline.bucket, Key="data/gone-1")
    s3.put_object(Bucket=pipeline.bucket, Key="data/gone-2", Body=b"v1")
    s3.put_object(Bucket=pipeline.bucket, Key="data/gone-2", Body=b"v2")
    s3.delete_object(Bucket=pipeline.bucket, Key="data/gone-2")
    sqs.send_message(
        QueueUrl=pipeline.queue_url,
        MessageBody=s3_event(pipeline, "ObjectCreated:Put", "data/never", size=3),
    )
    s3.put_object(Bucket=pipeline.bucket, Key="incoming/b1/_READY", Body=b"")
    s3.delete_object(Bucket=pipeline.bucket, Key="incoming/b1/_READY")

    output = tmp_path / "runs.jsonl"
    config = write_config(
        tmp_path / "s3pull.toml",
        through(pipeline, proxy.url),
        tmp_path / "state",
        [
            {
                "name": "data",
                "bucket": pipeline.bucket,
                "prefix": "data/",
                "directory": tmp_path / "mirror",
            }
        ],
        [
            {
                "name": "orders",
                "bucket": pipeline.bucket,
                "prefix": "incoming/",
                "marker": "_READY",
                "directory": tmp_path / "batches",
                "command": [sys.executable, str(RECORD_BATCH), str(output)],
            }
        ],
    )
    agent = start_agent(config)
    agent.wait_ready()
    expected = {
        "absent data/gone-1 (ObjectCreated:Put": 1,
        "absent data/gone-1 (ObjectRemoved:Delete": 1,
        "absent data/gone-2 (ObjectCreated:Put": 2,
        "absent data/gone-2 (ObjectRemoved:Delete": 1,
        "absent data/never (ObjectCreated:Put": 1,
        "orders: batch incoming/b1/ marker-gone": 1,
    }
    for line, count in expected.items():
        agent.wait_for_log(line, count=count)
    wait_until(lambda: queue_depth(pipeline, pipeline.queue_url) == 0, what="the queue to drain")
    log = agent.log
    assert {line: log.count(line) for line in expected} == expected
    assert dead_letters(pipeline.endpoint, pipeline.dead_letter_url) == []
    # One GET per create event, one HEAD per remove event: no retries.
    assert proxy.seen("s3", "GetObject", key="data/gone-1") == 1
    assert proxy.seen("s3", "HeadObject", key="data/gone-1") == 1
    assert proxy.seen("s3", "GetObject", key="data/gone-2") == 2
    assert proxy.seen("s3", "GetObject", key="data/never") == 1
    assert proxy.seen("s3", "GetObject", key="incoming/b1/_READY") == 1
    assert not output.exists(), "no command for a withdrawn batch"
    assert "will retry" not in log
    assert not list((tmp_path / "mirror").iterdir())
    figures("gone before handled (404)", events=sum(expected.values()), retries=0)
    assert agent.stop() == 0

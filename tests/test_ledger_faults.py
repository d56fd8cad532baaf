"""The ledger's local faults, end to end: a corrupt file and a lock held by another process.

A real ``s3pull run`` (and ``s3pull sync``) against the moto server with real S3 -> SNS
-> SQS notifications; a real corrupt file (garbage written over ``ledger.sqlite3``); a
real second process holding SQLite's write lock; systemd's side of ``NOTIFY_SOCKET`` as a
real datagram socket whose every ping is timed.
"""

from __future__ import annotations

import itertools
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conftest import AGENT_ENV, Agent, queue_depth, render_config, run_s3pull, wait_until
from s3pull.emulator import Pipeline, create_pipeline

GARBAGE = b"\x00\xde\xad\xbe\xef this is not an SQLite file " * 300


def _mirror(pipeline: Pipeline, tmp_path: Path) -> dict[str, Any]:
    return {
        "name": "data",
        "bucket": pipeline.bucket,
        "prefix": "data/",
        "directory": tmp_path / "mirror",
    }


def _identities(directory: Path) -> dict[str, tuple[int, int]]:
    """Inode and mtime of every file: a download replaces the inode (atomic rename)."""
    return {
        p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in directory.iterdir() if p.is_file()
    }


def _ledger_row(state: Path, key: str) -> tuple[Any, ...] | None:
    db = sqlite3.connect(f"file:{state / 'ledger.sqlite3'}?mode=ro", uri=True)
    try:
        row: tuple[Any, ...] | None = db.execute(
            "SELECT present, etag, size FROM objects WHERE key = ?", (key,)
        ).fetchone()
        return row
    finally:
        db.close()


def _moved_aside(state: Path) -> list[Path]:
    found = state.glob("ledger.sqlite3.corrupt-*")
    return sorted(p for p in found if not p.name.endswith(("-wal", "-shm")))


def test_a_corrupt_ledger_is_moved_aside_and_the_agent_rebuilds_it_and_runs(
    tmp_path: Path, pipeline: Pipeline, s3: Any, start_agent: Callable[..., Agent]
) -> None:
    for name in ("a.txt", "b.txt", "c.txt"):
        s3.put_object(Bucket=pipeline.bucket, Key=f"data/{name}", Body=name.encode() * 100)
    state, mirror = tmp_path / "state", tmp_path / "mirror"
    config = tmp_path / "s3pull.toml"
    config.write_text(render_config(pipeline, state, [_mirror(pipeline, tmp_path)]))
    assert run_s3pull("sync", "--config", str(config)).returncode == 0
    before = _identities(mirror)
    assert len(before) == 3

    (state / "ledger.sqlite3").write_bytes(GARBAGE)
    agent = start_agent(config)
    agent.wait_ready()

    # Said loudly, naming the file moved aside; the evidence is kept byte for byte.
    (aside,) = _moved_aside(state)
    assert aside.read_bytes() == GARBAGE
    errors = [line for line in agent.log.splitlines() if "ERROR" in line and str(aside) in line]
    assert len(errors) == 1, agent.log
    # The start-up reconcile rebuilt it without downloading what already matched S3.
    assert "0 downloaded, 0 deleted, 3 up to date" in agent.log
    assert _identities(mirror) == before
    assert _ledger_row(state, "data/a.txt") is not None

    # And the agent goes on: later changes are applied.
    s3.put_object(Bucket=pipeline.bucket, Key="data/new.txt", Body=b"new")
    s3.put_object(Bucket=pipeline.bucket, Key="data/a.txt", Body=b"changed")
    wait_until(lambda: (mirror / "new.txt").is_file(), what="data/new.txt on disk")
    wait_until(lambda: (mirror / "a.txt").read_bytes() == b"changed", what="data/a.txt changed")
    assert agent.stop(signal.SIGTERM) == 0


def test_sync_moves_a_corrupt_ledger_aside_and_rebuilds_it(
    tmp_path: Path, pipeline: Pipeline, s3: Any
) -> None:
    for name in ("a.txt", "b.txt"):
        s3.put_object(Bucket=pipeline.bucket, Key=f"data/{name}", Body=name.encode())
    state, mirror = tmp_path / "state", tmp_path / "mirror"
    config = tmp_path / "s3pull.toml"
    config.write_text(render_config(pipeline, state, [_mirror(pipeline, tmp_path)]))
    assert run_s3pull("sync", "--config", str(config)).returncode == 0
    before = _identities(mirror)

    (state / "ledger.sqlite3").write_bytes(GARBAGE)
    s3.put_object(Bucket=pipeline.bucket, Key="data/b.txt", Body=b"b, changed meanwhile")
    synced = run_s3pull("sync", "--config", str(config))

    assert synced.returncode == 0, synced.stderr
    (aside,) = _moved_aside(state)
    assert f"moved it aside to {aside}" in synced.stderr
    assert "1 downloaded, 0 deleted, 1 up to date" in synced.stderr
    assert _identities(mirror)["a.txt"] == before["a.txt"]  # not downloaded again
    assert (mirror / "b.txt").read_bytes() == b"b, changed meanwhile"
    # The rebuilt ledger is whole: the next sync moves nothing aside and fetches nothing.
    again = run_s3pull("sync", "--config", str(config))
    assert again.returncode == 0 and "0 downloaded, 0 deleted, 2 up to date" in again.stderr
    assert len(_moved_aside(state)) == 1


class TimedNotifySocket:
    """systemd's side of NOTIFY_SOCKET: a thread stamps every datagram as it arrives."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.1)
        self.received: list[tuple[float, str]] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        while not self._done.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            self.received.append((time.monotonic(), data.decode()))

    def pings(self) -> list[float]:
        return [at for at, message in list(self.received) if "WATCHDOG=1" in message.split("\n")]

    def ready(self) -> bool:
        return any("READY=1" in message.split("\n") for _at, message in list(self.received))

    def close(self) -> None:
        self._done.set()
        self._thread.join()
        self.sock.close()


HOLD_LOCK = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
db.execute("ROLLBACK")
"""


def test_a_lock_held_by_another_process_never_stalls_the_watchdog_and_loses_nothing(
    tmp_path: Path, moto_endpoint: str, s3: Any, start_agent: Callable[..., Agent]
) -> None:
    # Room for a few receives while the lock is held: the change is handed back each time.
    pipeline = create_pipeline(moto_endpoint, f"t-{uuid.uuid4().hex[:16]}", max_receive_count=10)
    state, mirror = tmp_path / "state", tmp_path / "mirror"
    config = tmp_path / "s3pull.toml"
    config.write_text(render_config(pipeline, state, [_mirror(pipeline, tmp_path)]))
    systemd = TimedNotifySocket(str(tmp_path / "notify.sock"))
    try:
        # WatchdogSec=1: a ping every 0.5 s.
        agent = start_agent(
            config, {"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "1000000"}
        )
        wait_until(systemd.ready, what="READY=1")

        holder = subprocess.Popen(
            [sys.executable, "-c", HOLD_LOCK, str(state / "ledger.sqlite3")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=AGENT_ENV,
        )
        assert holder.stdout is not None and holder.stdin is not None
        assert holder.stdout.readline().strip() == "locked"
        locked_at = time.monotonic()
        s3.put_object(Bucket=pipeline.bucket, Key="data/during.txt", Body=b"written while locked")
        time.sleep(5.0)  # the change arrives and is tried while the lock is held
        released_at = time.monotonic()
        holder.stdin.write("release\n")
        holder.stdin.flush()
        assert holder.wait(10) == 0

        pings = [at for at in systemd.pings() if locked_at - 0.5 <= at <= released_at + 0.5]
        gaps = [later - earlier for earlier, later in itertools.pairwise(pings)]
        assert len(pings) >= 9, f"{len(pings)} pings in {released_at - locked_at:.1f} s"
        assert max(gaps) < 1.0, f"the loop stalled {max(gaps):.2f} s while the ledger was locked"
        # The lock really was in the way: the change was handed back, not lost.
        assert "LedgerBusy" in agent.log

        wait_until(
            lambda: (
                (mirror / "during.txt").is_file()
                and (mirror / "during.txt").read_bytes() == b"written while locked"
            ),
            what="the change applied after the lock was released",
        )
        wait_until(lambda: _ledger_row(state, "data/during.txt") is not None, what="ledger row")
        wait_until(lambda: queue_depth(pipeline, pipeline.queue_url) == 0, what="queue empty")
        assert queue_depth(pipeline, pipeline.dead_letter_url) == 0
        assert agent.stop(signal.SIGTERM) == 0
    finally:
        systemd.close()
    assert os.path.exists(state / "ledger.sqlite3")


def test_corruption_found_while_running_is_moved_aside_and_every_mirror_reconciled(
    tmp_path: Path, pipeline: Pipeline, s3: Any, start_agent: Callable[..., Agent]
) -> None:
    for name in ("a.txt", "b.txt"):
        s3.put_object(Bucket=pipeline.bucket, Key=f"data/{name}", Body=name.encode())
    state, mirror = tmp_path / "state", tmp_path / "mirror"
    config = tmp_path / "s3pull.toml"
    config.write_text(render_config(pipeline, state, [_mirror(pipeline, tmp_path)]))
    agent = start_agent(config)
    agent.wait_ready()
    # The uploads' own events come after the start-up reconcile: let them pass first.
    agent.wait_for_log("unchanged data/a.txt")
    agent.wait_for_log("unchanged data/b.txt")
    wait_until(lambda: queue_depth(pipeline, pipeline.queue_url) == 0, what="queue empty")
    before = _identities(mirror)

    # Behind the agent's back, as a bad disk would: move the WAL into the file (so the
    # agent's next read goes to the file), then spoil the file where it lies.
    other = sqlite3.connect(state / "ledger.sqlite3")
    other.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    other.close()
    path = state / "ledger.sqlite3"
    with path.open("r+b") as f:
        f.write(GARBAGE[: path.stat().st_size])
    s3.put_object(Bucket=pipeline.bucket, Key="data/new.txt", Body=b"new")

    wait_until(lambda: (mirror / "new.txt").is_file(), what="data/new.txt on disk")
    (aside,) = _moved_aside(state)
    assert any("ERROR" in line and str(aside) in line for line in agent.log.splitlines())
    # The fresh ledger is filled by a full reconcile, which downloads nothing again
    # (new.txt comes by its event or by that reconcile, whichever is first).
    agent.wait_for_log("serving again to reconcile every mirror")
    agent.wait_for_log("reconciled 1 mirror(s)", count=2)
    second = agent.log.rsplit("reconciled 1 mirror(s)", 1)[1].split("\n", 1)[0]
    assert "0 deleted" in second and "0 failed" in second, second
    assert "2 up to date" in second or "3 up to date" in second, second
    assert {k: v for k, v in _identities(mirror).items() if k != "new.txt"} == before
    wait_until(lambda: _ledger_row(state, "data/a.txt") is not None, what="a.txt in the ledger")
    assert _ledger_row(state, "data/new.txt") is not None
    assert agent.process.poll() is None
    assert agent.stop(signal.SIGTERM) == 0

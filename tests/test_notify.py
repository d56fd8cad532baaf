"""sd_notify as systemd sees it: datagrams on a real unix socket."""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path

from conftest import Agent, render_config, wait_until
from s3pull.emulator import Pipeline
from s3pull.notify import Notifier


class NotifySocket:
    """Plays systemd's side: collects every datagram sent to NOTIFY_SOCKET."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.setblocking(False)
        self.messages: list[str] = []

    def drain(self) -> list[str]:
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return self.messages

    def fields(self) -> list[str]:
        return [field for message in self.drain() for field in message.split("\n")]


def test_notifier_is_a_no_op_without_notify_socket() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    notifier.ready("x")  # must not raise
    assert notifier.watchdog_interval is None


def test_notifier_speaks_to_an_abstract_socket() -> None:
    name = f"s3pull-test-{os.getpid()}"
    listener = NotifySocket("\0" + name)
    notifier = Notifier({"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "3000000"})
    notifier.ready("in sync")
    notifier.watchdog()
    assert listener.drain() == ["READY=1\nSTATUS=in sync", "WATCHDOG=1"]
    assert notifier.watchdog_interval == 1.5


def test_watchdog_meant_for_another_process_is_ignored() -> None:
    notifier = Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"})
    assert notifier.watchdog_interval is None


def test_daemon_reports_ready_after_bootstrap_then_watchdog_status_and_stopping(
    tmp_path: Path, pipeline: Pipeline, s3: object, start_agent: Callable[..., Agent]
) -> None:
    s3.put_object(Bucket=pipeline.bucket, Key="data/early.txt", Body=b"early")  # type: ignore[attr-defined]
    config = tmp_path / "s3pull.toml"
    mirror = {
        "name": "data",
        "bucket": pipeline.bucket,
        "prefix": "data/",
        "directory": tmp_path / "mirror",
    }
    config.write_text(render_config(pipeline, tmp_path / "state", [mirror]))
    systemd = NotifySocket(str(tmp_path / "notify.sock"))
    agent = start_agent(
        config, {"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "400000"}
    )

    wait_until(lambda: "READY=1" in systemd.fields(), what="READY=1")
    # READY only once the bootstrap is done: the early object is already on disk.
    assert (tmp_path / "mirror" / "early.txt").read_bytes() == b"early"
    wait_until(lambda: systemd.fields().count("WATCHDOG=1") >= 3, what="watchdog pings")
    statuses = [f for f in systemd.fields() if f.startswith("STATUS=")]
    assert any("bootstrapping" in status for status in statuses)
    assert any("in sync" in status for status in statuses)

    assert agent.stop(signal.SIGTERM) == 0
    assert "STOPPING=1" in systemd.fields()


def test_a_reload_says_reloading_then_ready_never_stopping(
    tmp_path: Path, pipeline: Pipeline, start_agent: Callable[..., Agent]
) -> None:
    config = tmp_path / "s3pull.toml"
    mirror = {
        "name": "data",
        "bucket": pipeline.bucket,
        "prefix": "data/",
        "directory": tmp_path / "mirror",
    }
    config.write_text(render_config(pipeline, tmp_path / "state", [mirror]))
    systemd = NotifySocket(str(tmp_path / "notify.sock"))
    agent = start_agent(config, {"NOTIFY_SOCKET": str(tmp_path / "notify.sock")})
    wait_until(lambda: "READY=1" in systemd.fields(), what="READY=1")

    config.write_text(render_config(pipeline, tmp_path / "state", [{**mirror, "prefix": "x/"}]))
    agent.process.send_signal(signal.SIGHUP)
    agent.wait_for_log("serving the new configuration")
    wait_until(lambda: systemd.fields().count("READY=1") == 2, what="READY=1 after the reload")
    fields = systemd.fields()
    # STOPPING=1 here would make systemd start its stop timer and kill the agent later.
    assert "RELOADING=1" in fields
    assert "STOPPING=1" not in fields
    assert fields.index("RELOADING=1") < len(fields) - fields[::-1].index("READY=1") - 1
    assert agent.stop(signal.SIGTERM) == 0
    assert "STOPPING=1" in systemd.fields()

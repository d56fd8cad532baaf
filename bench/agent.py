"""s3pull as the bench runs it: a configuration file, and ``s3pull run`` as a child process
whose log lines are stamped as they arrive and which a real SIGTERM stops."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from s3pull.emulator import DUMMY_CREDENTIALS

from .procs import Measured, ProcSample, reap, sample

__all__ = ["S3PULL", "AgentProcess", "MirrorSpec", "agent_env", "write_config"]

S3PULL = str(Path(sys.executable).with_name("s3pull"))


@dataclass(frozen=True, slots=True)
class MirrorSpec:
    bucket: str
    prefix: str
    directory: Path
    max_bandwidth: str = ""  # "" = no cap


def agent_env() -> dict[str, str]:
    env = {**os.environ, **DUMMY_CREDENTIALS, "PYTHONUNBUFFERED": "1"}
    # Not under systemd here, whatever the calling shell says.
    env.pop("NOTIFY_SOCKET", None)
    env.pop("JOURNAL_STREAM", None)
    return env


def write_config(
    path: Path,
    endpoint: str,
    queue_url: str,
    state: Path,
    mirrors: list[MirrorSpec],
    wait_time_seconds: int = 20,
    own_queue: tuple[str, str] | None = None,
) -> Path:
    """A configuration with the defaults an operator would get, but for the endpoint.

    ``own_queue`` (topic ARN, instance id) gives the agent a provisioned queue of its own
    instead of ``queue_url``: the production shape, and the one that publishes state."""
    queue = [f"url = {json.dumps(queue_url)}"]
    agent: list[str] = []
    if own_queue is not None:
        queue = [f"topic_arn = {json.dumps(own_queue[0])}", f"name = {json.dumps(queue_url)}"]
        agent = [f"instance_id = {json.dumps(own_queue[1])}"]
    lines = [
        "[aws]",
        'region = "us-east-1"',
        f"endpoint_url = {json.dumps(endpoint)}",
        "",
        "[queue]",
        *queue,
        f"wait_time_seconds = {wait_time_seconds}",
        "",
        "[agent]",
        f"state_directory = {json.dumps(str(state))}",
        *agent,
    ]
    for index, mirror in enumerate(mirrors):
        lines += [
            "",
            "[[mirror]]",
            f'name = "m{index}"',
            f"bucket = {json.dumps(mirror.bucket)}",
            f"prefix = {json.dumps(mirror.prefix)}",
            f"directory = {json.dumps(str(mirror.directory))}",
        ]
        if mirror.max_bandwidth:
            lines.append(f"max_bandwidth = {json.dumps(mirror.max_bandwidth)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


class AgentProcess:
    """``s3pull run`` in a child process; every log line is kept with its arrival time."""

    def __init__(self, config: Path, log: Path) -> None:
        self._log = log.open("a")
        self.started = time.perf_counter()
        self.spawned_at = time.time()
        self._process = subprocess.Popen(
            [S3PULL, "run", "--config", str(config)],
            env=agent_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.pid = self._process.pid
        self._lines: list[tuple[float, str]] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.result: Measured | None = None
        self._terminated = False

    def _read(self) -> None:
        assert self._process.stderr is not None
        for line in self._process.stderr:
            stamp = time.time()
            self._log.write(line)
            with self._changed:
                self._lines.append((stamp, line))
                self._changed.notify_all()
        with self._changed:
            self._lines.append((time.time(), "<exited>"))
            self._changed.notify_all()

    def wait_for(self, text: str, timeout: float) -> float:
        """The arrival time of the first log line containing ``text``."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for stamp, line in self._lines:
                    if text in line:
                        return stamp
                    if line == "<exited>":
                        raise RuntimeError(f"s3pull run exited before logging {text!r}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"s3pull run did not log {text!r} in {timeout:.0f} s")
                self._changed.wait(left)

    def wait_ready(self, timeout: float = 1800.0) -> float:
        """When the bootstrap was over and the first long poll started."""
        return self.wait_for("ready: polling", timeout)

    def sample(self) -> ProcSample:
        return sample(self.pid)

    def terminate(self) -> None:
        """Send SIGTERM once (a second one would skip the drain)."""
        if not self._terminated:
            self._terminated = True
            self._process.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 60.0) -> Measured:
        """SIGTERM, as systemd would; SIGKILL if it outlives ``timeout``."""
        if self.result is not None:
            return self.result
        self.terminate()
        timer = threading.Timer(timeout, self._process.kill)
        timer.start()
        try:
            self.result = reap(self._process, self.started)  # type: ignore[arg-type]
        finally:
            timer.cancel()
        self._reader.join(timeout=5)
        self._log.close()
        return self.result

"""Shared fixtures: one moto server per session, a fresh bucket/topic/queue per test, and
the agent as a real subprocess that real signals stop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from s3pull.emulator import DUMMY_CREDENTIALS, Pipeline, client, create_pipeline, moto_server

# Tests never reach the real instance metadata service (169.254.169.254 is off-limits):
# the tests that need IMDS point AWS_EC2_METADATA_SERVICE_ENDPOINT at a local stand-in.
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
AGENT_ENV = {**os.environ, **DUMMY_CREDENTIALS, "PYTHONUNBUFFERED": "1"}
AGENT_ENV.pop("NOTIFY_SOCKET", None)
AGENT_ENV.pop("JOURNAL_STREAM", None)


# The safety net of every wait below. Generous because `make test` runs the suite in
# parallel workers on 2 shared cores, where starting an agent can take tens of seconds;
# a passing test never waits for it.
SAFETY_NET = 90.0


def wait_until(predicate: Callable[[], Any], timeout: float = SAFETY_NET, what: str = "") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test on timeout.

    The timeout is a safety net against hangs, never the thing being measured.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what or predicate}")
        time.sleep(0.05)


def run_s3pull(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The command line, as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "s3pull", *args],
        capture_output=True,
        text=True,
        env={**AGENT_ENV, **(env or {})},
        timeout=120,
    )


def queue_depth(pipeline: Pipeline, url: str) -> int:
    """Messages waiting plus in flight."""
    attributes = client(pipeline.endpoint, "sqs").get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]) + int(
        attributes["ApproximateNumberOfMessagesNotVisible"]
    )


def receive_bodies(sqs: Any, url: str) -> list[str]:
    """Take what a queue holds now (one long poll of a second), deleting it."""
    response = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
    bodies = []
    for message in response.get("Messages", ()):
        bodies.append(message["Body"])
        sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    return bodies


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--emulator",
        default="moto",
        help="'moto' (default: a moto server per session) or the URL of a running"
        " LocalStack, the second opinion whose events differ from moto's as AWS's do",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--emulator") == "moto":
        return
    for item in items:
        marker = item.get_closest_marker("moto_only")
        if marker is not None:
            item.add_marker(pytest.mark.skip(reason=f"moto only: {marker.args[0]}"))


@pytest.fixture(scope="session")
def moto_endpoint(request: pytest.FixtureRequest) -> Iterator[str]:
    """The emulator's endpoint (named for the default). Everything the tests need of it:
    S3, SNS and SQS with the real notification path."""
    emulator = str(request.config.getoption("--emulator"))
    if emulator != "moto":
        for name, value in DUMMY_CREDENTIALS.items():
            os.environ.setdefault(name, value)
        yield emulator.rstrip("/")
        return
    with moto_server() as endpoint:
        yield endpoint


@pytest.fixture
def pipeline(moto_endpoint: str) -> Pipeline:
    return create_pipeline(moto_endpoint, f"t-{uuid.uuid4().hex[:16]}", max_receive_count=2)


@pytest.fixture
def s3(moto_endpoint: str) -> Any:
    return client(moto_endpoint, "s3")


@pytest.fixture
def sqs(moto_endpoint: str) -> Any:
    return client(moto_endpoint, "sqs")


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def render_config(
    pipeline: Pipeline,
    state: Path,
    mirrors: list[dict[str, Any]],
    triggers: list[dict[str, Any]] | None = None,
    queue: dict[str, Any] | None = None,
) -> str:
    queue_settings = {
        "url": pipeline.queue_url,
        "wait_time_seconds": 1,
        "visibility_timeout": 2,
        # What the queue's redrive says, as an operator's configuration would (`check`
        # compares the two).
        "max_receive_count": pipeline.max_receive_count,
        **(queue or {}),
    }
    tables: list[tuple[str, dict[str, Any]]] = [
        ("[aws]", {"region": "us-east-1", "endpoint_url": pipeline.endpoint}),
        ("[queue]", queue_settings),
        ("[agent]", {"state_directory": state, "concurrency": 8}),
        *(("[[mirror]]", mirror) for mirror in mirrors),
        *(("[[trigger]]", trigger) for trigger in triggers or ()),
    ]
    lines = []
    for header, table in tables:
        lines.append(header)
        lines.extend(
            f"{key} = {toml_value(value)}" for key, value in table.items() if value is not None
        )
    return "\n".join(lines) + "\n"


class Agent:
    """``s3pull run`` as a child process, its log captured to a file."""

    def __init__(
        self,
        config: Path,
        log: Path,
        env: dict[str, str] | None = None,
        prefix: Sequence[str] = (),
    ) -> None:
        self.config = config
        self.log_path = log
        self._log_file = log.open("ab")
        self.process = subprocess.Popen(
            # ``prefix``: for example setpriv, to run the agent as an unprivileged user.
            [*prefix, sys.executable, "-m", "s3pull", "run", "--config", str(config)],
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env={**AGENT_ENV, **(env or {})},
        )

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float = SAFETY_NET, count: int = 1) -> None:
        def seen() -> bool:
            if self.process.poll() is not None and self.log.count(text) < count:
                pytest.fail(f"agent exited {self.process.returncode}:\n{self.log}")
            return self.log.count(text) >= count

        wait_until(seen, timeout, f"{text!r} in the agent log")

    def wait_ready(self) -> None:
        self.wait_for_log("ready: polling")

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 40.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signum)
        try:
            return self.process.wait(timeout)
        finally:
            self._log_file.close()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._log_file.close()


@pytest.fixture
def start_agent(tmp_path: Path) -> Iterator[Callable[..., Agent]]:
    agents: list[Agent] = []

    def start(config: Path, env: dict[str, str] | None = None, prefix: Sequence[str] = ()) -> Agent:
        agent = Agent(config, tmp_path / f"agent-{len(agents)}.log", env, prefix)
        agents.append(agent)
        return agent

    yield start
    for agent in agents:
        agent.kill()


@pytest.fixture
def immutable() -> Iterator[Callable[[Path], None]]:
    """Make a directory immutable (chattr +i): even root cannot create a file in it, which
    is what an unwritable directory is to the service user. Undone at the end."""
    made: list[Path] = []

    def make(path: Path) -> None:
        result = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"chattr +i does not work here: {result.stderr.strip()}")
        made.append(path)

    yield make
    for path in made:
        subprocess.run(["chattr", "-i", str(path)], check=False)

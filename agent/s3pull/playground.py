"""``s3pull demo --serve``: the demo's emulator left running for a newcomer's own tries.

A moto server on loopback wired as production is (bucket -> topic -> queue with its
dead-letter queue), a working configuration for it in a fresh directory, and the exact
commands to run next. It serves until SIGINT or SIGTERM, then stops the emulator and
removes that directory: the emulator keeps everything in memory, so a configuration that
outlived it would point at an endpoint that is gone.

Needs the ``demo`` extra (moto), like the demo itself.
"""

from __future__ import annotations

import json
import shlex
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from s3pull.demo import emulator_missing

__all__ = ["Playground", "next_steps", "serve_demo", "write_config"]

BUCKET = "s3pull-demo"
STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})

# The emulator takes any credentials; the printed commands set these so that a shell with
# real ones (or a profile, which botocore would otherwise prefer) never sends them to it.
EXPORTS = (
    "export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing"
    " AWS_DEFAULT_REGION=us-east-1; unset AWS_PROFILE"
)


@dataclass(frozen=True, slots=True)
class Playground:
    """What a serve set up: the emulator's queue and the directory holding the rest."""

    endpoint: str
    queue_url: str
    max_receive_count: int
    directory: Path

    @property
    def config(self) -> Path:
        return self.directory / "s3pull.toml"

    @property
    def mirror(self) -> Path:
        return self.directory / "mirror"

    @property
    def state(self) -> Path:
        return self.directory / "state"


def write_config(playground: Playground) -> None:
    """A configuration an operator could have written: the queue by its URL, one mirror
    of the whole bucket, the state directory beside it."""

    def string(value: object) -> str:
        # A JSON string is a TOML basic string: a $TMPDIR with quotes stays valid.
        return json.dumps(str(value))

    playground.config.write_text(
        f"""\
# Written by `s3pull demo --serve` for its emulator at {playground.endpoint};
# removed when it stops.
[aws]
region = "us-east-1"
endpoint_url = {string(playground.endpoint)}

[queue]
url = {string(playground.queue_url)}
max_receive_count = {playground.max_receive_count}  # what the queue's redrive policy says

[agent]
state_directory = {string(playground.state)}

[[mirror]]
name = "demo"
bucket = "{BUCKET}"
prefix = ""  # the whole bucket; "assets/" would mirror only that folder
directory = {string(playground.mirror)}
"""
    )


def _s3pull_command() -> list[str]:
    # The s3pull of this very installation, whatever PATH says in the next terminal.
    script = Path(sys.executable).parent / "s3pull"
    return [str(script)] if script.exists() else [sys.executable, "-m", "s3pull"]


def next_steps(playground: Playground) -> list[str]:
    """The lines printed once the emulator serves: what was set up, then the commands to
    copy, each on a line of its own."""
    s3pull = shlex.join(_s3pull_command())
    config = shlex.quote(str(playground.config))
    endpoint = playground.endpoint
    upload = (
        f'import boto3; boto3.client("s3", endpoint_url="{endpoint}").put_object('
        f'Bucket="{BUCKET}", Key="hello.txt", Body=b"hello\\n")'
    )
    lines = [
        f"s3pull demo --serve: an AWS emulator (moto: S3, SNS, SQS) on {endpoint}",
        f"  bucket {BUCKET} -> topic {BUCKET} -> queue {BUCKET} (raw delivery; dead-letter"
        f" queue {BUCKET}-dlq after {playground.max_receive_count} receives)",
        f"  configuration  {playground.config}",
        f"  mirror         s3://{BUCKET}/ -> {playground.mirror}",
        f"  state          {playground.state}",
        "",
        "In another terminal, check the chain, then start the agent:",
        f"  {EXPORTS}",
        f"  {s3pull} check --config {config}",
        f"  {s3pull} run --config {config}",
        "",
        "Then, in a third terminal with the same export line, upload a file:",
        f"  {shlex.quote(sys.executable)} -c {shlex.quote(upload)}",
    ]
    if shutil.which("aws"):
        lines.append(
            f"  echo hello | aws --endpoint-url {endpoint} s3 cp - s3://{BUCKET}/hello.txt"
        )
    lines += [
        f"and see it land as {playground.mirror / 'hello.txt'}; delete it in S3 and it goes.",
        "",
        f"Serving until Ctrl-C or SIGTERM; then the emulator stops and {playground.directory}"
        " is removed with it.",
    ]
    return lines


@contextmanager
def _stop_signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back from every thread until the main thread waits for
    them: the emulator's threads, started inside, inherit the mask, and a signal that
    comes during set-up is kept pending instead of killing the process before it cleans
    up."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def serve_demo() -> int:
    missing = emulator_missing()
    if missing is not None:
        print(missing, file=sys.stderr)
        return 1
    from s3pull.emulator import create_pipeline, moto_server

    with _stop_signals_held():
        directory = Path(tempfile.mkdtemp(prefix="s3pull-serve-"))
        try:
            with moto_server() as endpoint:
                pipeline = create_pipeline(endpoint, BUCKET)
                playground = Playground(
                    endpoint, pipeline.queue_url, pipeline.max_receive_count, directory
                )
                write_config(playground)
                print("\n".join(next_steps(playground)), flush=True)
                received = signal.sigwait(STOP_SIGNALS)
                print(f"{signal.Signals(received).name}: stopping the emulator", flush=True)
        finally:
            shutil.rmtree(directory, ignore_errors=True)
    print(f"stopped; removed {directory}", flush=True)
    return 0

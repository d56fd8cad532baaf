"""``s3pull demo``: the whole pipeline on an embedded moto server on loopback.

Bucket -> notifications -> SNS topic -> SQS queue -> ``s3pull run`` (a real child
process, stopped with a real SIGTERM), with uploads, a same-size overwrite and a delete,
each shown landing on disk.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = ["emulator_missing", "run_demo"]

BUCKET = "s3pull-demo"

# The "business process" the trigger starts: run without a shell, in the batch directory,
# with the batch described by S3PULL_* variables. It leaves a receipt outside the batch.
BUSINESS_PROCESS = """\
import os, sys
files = sorted(os.path.join(d, n)[2:] for d, _, names in os.walk(".") for n in names)
batch = os.environ["S3PULL_BATCH_PREFIX"]
print(f"business process: batch {batch} in {os.getcwd()}")
for name in files:
    print(f"  {name}: {os.path.getsize(name)} bytes")
receipt = os.path.join(sys.argv[1], batch.strip("/").replace("/", "_") + ".done")
open(receipt, "w").write("\\n".join(files))
"""


def say(text: str) -> None:
    print(f"demo  | {text}", flush=True)


def _relay(stream: IO[str]) -> None:
    for line in stream:
        print(f"agent | {line}", end="", flush=True)


def _wait(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what}")
        time.sleep(0.05)


def _config(endpoint: str, queue_url: str, work: Path) -> Path:
    path = work / "s3pull.toml"
    # A script file, not `python -c`: a configuration string may hold no newline.
    script = work / "business_process.py"
    script.write_text(BUSINESS_PROCESS)
    command = [sys.executable, str(script), str(work / "receipts")]
    (work / "receipts").mkdir()
    path.write_text(
        f"""\
[aws]
region = "us-east-1"
endpoint_url = "{endpoint}"

[queue]
url = "{queue_url}"
wait_time_seconds = 5

[agent]
state_directory = "{work / "state"}"

[[mirror]]
name = "assets"
bucket = "{BUCKET}"
prefix = "assets/"
directory = "{work / "assets"}"

[[trigger]]
name = "orders"
bucket = "{BUCKET}"
prefix = "incoming/"
marker = "_READY"
directory = "{work / "incoming"}"
command = {json.dumps(command)}
timeout_seconds = 60
"""
    )
    return path


def emulator_missing() -> str | None:
    """Why the emulator cannot start here, as advice; None when it can.

    moto is the ``demo`` extra, never a dependency of the agent (the deb and rpm leave it
    out), so a plain install reaches this verb without it: say how to get it rather than
    end in a traceback."""
    try:
        import moto.server  # noqa: F401
    except ModuleNotFoundError as exc:
        return (
            f"s3pull: the demo needs the moto emulator, which is not installed here ({exc}):"
            " pip install 's3pull[demo]', or `make demo` from a checkout (it installs moto"
            " into .venv)"
        )
    return None


def run_demo(keep: bool = False) -> int:
    missing = emulator_missing()
    if missing is not None:
        print(missing, file=sys.stderr)
        return 1
    from s3pull.emulator import client, create_pipeline, moto_server

    work = Path(tempfile.mkdtemp(prefix="s3pull-demo-"))
    try:
        with moto_server() as endpoint:
            say(f"moto server (S3, SNS, SQS) listening on {endpoint}")
            pipeline = create_pipeline(endpoint, BUCKET)
            say(
                f"bucket {BUCKET} -> topic {pipeline.topic_arn.rsplit(':', 1)[1]}"
                f" -> queue {pipeline.queue_url.rsplit('/', 1)[1]} (raw delivery, dead-letter"
                " queue after 5 receives)"
            )
            s3 = client(endpoint, "s3")
            s3.put_object(Bucket=BUCKET, Key="assets/index.html", Body=b"<h1>hello</h1>\n")
            say("uploaded assets/index.html before the agent starts (bootstrap will fetch it)")
            return _drive(s3, _config(endpoint, pipeline.queue_url, work), work)
    finally:
        if keep:
            # The emulator kept everything in memory and is gone now: a configuration
            # left behind would point at a dead endpoint. `demo --serve` keeps one alive.
            (work / "s3pull.toml").unlink(missing_ok=True)
            say(f"kept {work} (the mirror, the batch, the receipts, the ledger)")
        else:
            shutil.rmtree(work, ignore_errors=True)
        say("to try uploads of your own: s3pull demo --serve (or make serve)")


def _drive(s3: Any, config: Path, work: Path) -> int:
    mirror = work / "assets"
    agent = subprocess.Popen(
        [sys.executable, "-m", "s3pull", "run", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert agent.stdout is not None
    relay = threading.Thread(target=_relay, args=(agent.stdout,), daemon=True)
    relay.start()
    try:
        _wait(lambda: (mirror / "index.html").exists(), "the bootstrap")
        say(f"bootstrap done: {mirror / 'index.html'} is on disk")
        time.sleep(0.5)  # let the agent reach its first poll, so the output reads in order

        uploads = {
            "assets/css/site.css": b"body { color: teal; }\n",
            "assets/img/logo one.svg": b"<svg/>\n",
            "assets/data/prices.csv": b"sku,price\nA1,100\n",
        }
        for key, body in uploads.items():
            s3.put_object(Bucket=BUCKET, Key=key, Body=body)
            say(f"uploaded {key} ({len(body)} bytes)")
        for key, body in uploads.items():
            target = mirror / key.removeprefix("assets/")
            _wait(lambda t=target, b=body: t.exists() and t.read_bytes() == b, key)  # type: ignore[misc]
            say(f"  -> {target} holds the uploaded bytes")

        prices = mirror / "data" / "prices.csv"
        new_body = b"sku,price\nA1,120\n"  # the same size: size+mtime tools miss this
        s3.put_object(Bucket=BUCKET, Key="assets/data/prices.csv", Body=new_body)
        say("overwrote assets/data/prices.csv with different bytes of the same size")
        _wait(lambda: prices.read_bytes() == new_body, "the overwrite")
        say(f"  -> {prices} now says A1,120")

        s3.delete_object(Bucket=BUCKET, Key="assets/img/logo one.svg")
        say("deleted assets/img/logo one.svg")
        _wait(lambda: not (mirror / "img").exists(), "the delete")
        say("  -> the file is gone, and its empty folder with it")

        say("files on disk now:")
        for path in sorted(p for p in mirror.rglob("*") if p.is_file()):
            say(f"    {path.relative_to(mirror)}  ({path.stat().st_size} bytes)")

        batch = "incoming/2026-11-30/"
        for name, body in (("orders-1.csv", b"id,qty\n1,5\n"), ("orders-2.csv", b"id,qty\n2,7\n")):
            s3.put_object(Bucket=BUCKET, Key=batch + name, Body=body)
            say(f"uploaded {batch}{name}")
        s3.put_object(Bucket=BUCKET, Key=batch + "_READY", Body=b"")
        say(f"uploaded the marker {batch}_READY: the batch is complete")
        receipt = work / "receipts" / "incoming_2026-11-30.done"
        _wait(receipt.exists, "the business process")
        say(
            f"  -> the command ran once on {work / 'incoming' / '2026-11-30'}"
            f" and saw: {', '.join(receipt.read_text().split())}"
        )
    except TimeoutError as exc:
        say(f"FAILED: {exc}")
        agent.kill()
        return 1
    finally:
        if agent.poll() is None:
            say("sending SIGTERM to the agent")
            agent.send_signal(signal.SIGTERM)
        code = agent.wait(timeout=60)
        relay.join(timeout=5)
    say(f"agent exited with status {code}")
    return code

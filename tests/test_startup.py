"""Each verb imports only what it uses (issue 13: start-up time and idle memory).

The command runs as a real process; at exit it writes the names of every module it
imported to a file, and the test reads that: behaviour, never a timer.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from conftest import AGENT_ENV, wait_until
from s3pull.emulator import Pipeline
from test_messages import mirror_config

# `python -m s3pull ARGS`, which at exit (however it exits) writes to $MODULES the names in
# sys.modules and whether the garbage collector runs.
WRAPPER = """
import atexit, gc, json, os, runpy, sys
def report():
    with open(os.environ["MODULES"], "w") as out:
        json.dump({"modules": sorted(sys.modules), "collecting": gc.isenabled()}, out)
atexit.register(report)
sys.argv[0] = "s3pull"
runpy.run_module("s3pull", run_name="__main__", alter_sys=True)
"""

# What no verb that only parses its arguments may import: each costs tens of milliseconds
# (asyncio with ssl 40, aiobotocore with aiohttp 250-400) or a megabyte.
HEAVY = {
    "aiobotocore",
    "aiohttp",
    "asyncio",
    "botocore",
    "importlib.metadata",
    "pathspec",
    "prometheus_client",
    "sqlite3",
    "watchfiles",
}


def command(*args: str) -> list[str]:
    return [sys.executable, "-c", WRAPPER, *args]


def imported(listing: Path) -> set[str]:
    return set(json.loads(listing.read_text())["modules"])


def collecting(listing: Path) -> bool:
    """Was the garbage collector on at exit? Verbs pause it while they import and build
    their clients (heap.py); one that stayed paused would never free a cycle."""
    return bool(json.loads(listing.read_text())["collecting"])


def heavy(modules: set[str]) -> set[str]:
    return {name for name in HEAVY if name in modules}


def run(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    listing = tmp_path / "modules.json"
    result = subprocess.run(
        command(*args),
        capture_output=True,
        text=True,
        env={**AGENT_ENV, "MODULES": str(listing)},
        timeout=120,
    )
    assert collecting(listing), args
    return result, imported(listing)


def test_help_version_and_usage_errors_import_nothing_heavy(tmp_path: Path) -> None:
    for args, code in [
        (["--help"], 0),
        (["sync", "--help"], 0),
        (["run", "--help"], 0),
        (["dlq", "list", "--help"], 0),
        (["sync", "--frobnicate"], 2),
    ]:
        result, modules = run(tmp_path, *args)
        assert result.returncode == code, (args, result.stderr)
        assert heavy(modules) == set(), args
    result, modules = run(tmp_path, "--version")
    assert result.returncode == 0 and result.stdout.startswith("s3pull ")
    # The version is the one thing it looks up; still none of the AWS machinery.
    assert heavy(modules) == {"importlib.metadata"}


def test_sync_imports_neither_metrics_nor_file_watching_nor_unused_patterns(
    tmp_path: Path, pipeline: Pipeline, s3: Any
) -> None:
    s3.put_object(Bucket=pipeline.bucket, Key="data/a.txt", Body=b"a")
    result, modules = run(tmp_path, "sync", "--config", str(mirror_config(tmp_path, pipeline)))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "mirror" / "a.txt").read_bytes() == b"a"
    assert "aiobotocore" in modules  # it did talk to S3 through it
    assert {"prometheus_client", "watchfiles", "pathspec"} & modules == set()


def test_agent_without_metrics_never_imports_prometheus(tmp_path: Path, pipeline: Pipeline) -> None:
    config = mirror_config(tmp_path, pipeline)
    listing = tmp_path / "modules.json"
    log = tmp_path / "agent.log"
    with log.open("w") as output:
        agent = subprocess.Popen(
            command("run", "--config", str(config)),
            stdout=output,
            stderr=subprocess.STDOUT,
            env={**AGENT_ENV, "MODULES": str(listing)},
        )
        try:
            wait_until(lambda: "ready: polling" in log.read_text(), what="the agent ready")
            agent.send_signal(signal.SIGTERM)
            assert agent.wait(60) == 0, log.read_text()
        finally:
            if agent.poll() is None:
                agent.kill()
                agent.wait()
    modules = imported(listing)
    assert collecting(listing)
    assert "watchfiles" in modules  # it does watch its configuration file
    assert {"prometheus_client", "pathspec"} & modules == set()

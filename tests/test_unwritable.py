"""An unwritable mirror directory is said once per cause, with a count, naming the mirror
and the whole path; nothing is lost once it is writable again (issue 16, item 6).

The tests run as root, which writes anywhere, so `s3pull` runs here as the unprivileged
user nobody (setpriv drops every capability with the uid): a directory made read-only
with chmod then fails the way it does for the service user, "Permission denied" (EACCES),
and chmod again heals it, as an operator would. (chattr +i fails root too, but with
"Operation not permitted", a different cause than the one operators meet.)
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import AGENT_ENV, Agent, render_config, wait_until
from conftest import run_s3pull as s3pull
from s3pull.emulator import Pipeline, create_pipeline
from s3pull.repeats import Repeats

NOBODY = 65534
AS_NOBODY = ("setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups")
SUMMARY = re.compile(
    r"ERROR +(\w+): \.\.\. and ([\d,]+) more (?:files?|failures? \(([\d,]+) files?\))"
    r" under (\S+): (.+)$"
)


@pytest.fixture
def home() -> Iterator[Path]:
    """A directory nobody owns (pytest's tmp_path is root's, mode 0700)."""
    path = Path(tempfile.mkdtemp(prefix="s3pull-nobody-"))
    path.chmod(0o755)
    os.chown(path, NOBODY, NOBODY)
    yield path
    shutil.rmtree(path)


def owned_directory(path: Path, mode: int = 0o755) -> Path:
    path.mkdir()
    os.chown(path, NOBODY, NOBODY)
    path.chmod(mode)
    return path


def write_config(home: Path, pipeline: Pipeline, mirror: Path) -> Path:
    table = {"name": "data", "bucket": pipeline.bucket, "prefix": "data/", "directory": mirror}
    config = home / "s3pull.toml"
    config.write_text(render_config(pipeline, home / "state", [table]))
    return config


def sync_as_nobody(config: Path, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*AS_NOBODY, sys.executable, "-m", "s3pull", "sync", "--config", str(config)],
        capture_output=True,
        text=True,
        env={**AGENT_ENV, "HOME": str(home)},
        timeout=120,
    )


def error_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if " ERROR " in line]


def test_sync_says_each_cause_once_with_a_count_then_heals(
    home: Path, pipeline: Pipeline, s3: Any
) -> None:
    mirror = owned_directory(home / "mirror")
    img = owned_directory(mirror / "img")
    # Two causes: files in the mirror itself (and a directory "new" made in it), and
    # files in its existing subdirectory img.
    top = [f"data/page-{n}.html" for n in range(25)] + [f"data/new/n-{n}.txt" for n in range(15)]
    below = [f"data/img/{n}.png" for n in range(40)]
    for key in top + below:
        s3.put_object(Bucket=pipeline.bucket, Key=key, Body=key.encode())
    config = write_config(home, pipeline, mirror)
    mirror.chmod(0o555)
    img.chmod(0o555)

    failed = sync_as_nobody(config, home)

    assert failed.returncode == 1, failed.stderr
    errors = error_lines(failed.stderr)
    assert len(errors) == 4, failed.stderr  # per cause: the first in full, then the count
    firsts = [line for line in errors if "could not download" in line]
    assert len(firsts) == 2
    for line in firsts:
        assert line.split("ERROR", 1)[1].split()[0] == "data:"  # the mirror
        assert "Permission denied" in line
        # The whole path, never a bare fragment ('img', '.s3pull-tmp-...').
        assert re.search(rf"'{re.escape(str(mirror))}/[^']+'", line), line
    summaries = {m[4]: m for m in map(SUMMARY.search, errors) if m}
    assert set(summaries) == {str(mirror), str(img)}
    for directory, expected in ((str(mirror), len(top)), (str(img), len(below))):
        match = summaries[directory]
        assert match[1] == "data"
        assert int(match[2].replace(",", "")) == expected - 1  # each file failed once
        assert match[5] == "Permission denied"
    # The reconcile's own count stays exact.
    assert f"{len(top) + len(below)} failed" in failed.stderr

    mirror.chmod(0o755)
    img.chmod(0o755)
    healed = sync_as_nobody(config, home)
    assert healed.returncode == 0, healed.stderr
    assert not error_lines(healed.stderr)
    for key in top + below:
        assert (mirror / key.removeprefix("data/")).read_bytes() == key.encode()


def test_the_daemon_says_each_cause_once_counts_every_failure_and_loses_nothing(
    home: Path, moto_endpoint: str, s3: Any, start_agent: Callable[..., Agent]
) -> None:
    # Enough receives that the changes keep failing rather than being dead-lettered.
    pipeline = create_pipeline(moto_endpoint, f"t-{uuid.uuid4().hex[:16]}", max_receive_count=50)
    mirror = owned_directory(home / "mirror", mode=0o555)
    config = write_config(home, pipeline, mirror)
    agent = start_agent(config, env={"HOME": str(home)}, prefix=AS_NOBODY)
    agent.wait_ready()

    keys = [f"data/page-{n}.html" for n in range(15)] + [f"data/img/{n}.png" for n in range(15)]
    for key in keys:
        s3.put_object(Bucket=pipeline.bucket, Key=key, Body=key.encode())

    def daemon_status() -> dict[str, Any]:
        return dict(json.loads(s3pull("status", "--json", "--config", str(config)).stdout))

    def all_failing() -> bool:
        failing = (daemon_status()["daemon"] or {}).get("failing", {})
        return bool(failing.get("data", {}).get("count") == len(keys))

    wait_until(all_failing, what="every change to fail at least once")
    mirror.chmod(0o755)  # the operator's fix; the messages come back by themselves
    wait_until(
        lambda: all((mirror / key.removeprefix("data/")).exists() for key in keys),
        timeout=90,
        what="every file after the fix",
    )
    assert agent.stop() == 0
    for key in keys:
        assert (mirror / key.removeprefix("data/")).read_bytes() == key.encode()

    errors = error_lines(agent.log)
    firsts = [line for line in errors if "could not apply" in line]
    assert len(firsts) == 1, agent.log  # one cause, said in full once
    assert "data: could not apply ObjectCreated:" in firsts[0]
    assert f"'{mirror}/" in firsts[0] and "Permission denied" in firsts[0]
    summaries = [m for m in map(SUMMARY.search, errors) if m]
    assert summaries and len(summaries) + 1 == len(errors), agent.log
    assert {(m[1], m[4], m[5]) for m in summaries} == {("data", str(mirror), "Permission denied")}
    # Every failure is in the log's counts and in status, exactly.
    logged = 1 + sum(int(m[2].replace(",", "")) for m in summaries)
    assert logged == daemon_status()["daemon"]["counters"]["errors"]
    assert logged >= len(keys)


class Lines(logging.Handler):
    """The messages logged, and an event set at each one."""

    def __init__(self) -> None:
        super().__init__()
        self.said: list[str] = []
        self.more = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.said.append(record.getMessage())
        self.more.set()

    async def until(self, count: int) -> list[str]:
        async with asyncio.timeout(30):  # a safety net, never the thing measured
            while len(self.said) < count:
                self.more.clear()
                await self.more.wait()
        return self.said


async def test_the_daemon_says_a_cause_once_an_interval_and_anew_after_a_quiet_one() -> None:
    """The rate rule on its own, in-process: one full line, one summary per interval
    while the cause keeps failing, and a full line again once a whole interval was
    quiet. The loop runs timers in the order they fall due, and every wait below is
    scheduled after the timer it must outlast: the order of events is fixed, and
    nothing measures time."""
    interval = 0.05
    repeats = Repeats(interval)
    denied = PermissionError(13, "Permission denied", "/srv/m/img/.s3pull-tmp-1")
    full = "m: could not apply a: [Errno 13] Permission denied: '/srv/m/img/.s3pull-tmp-1'"
    lines = Lines()
    logger = logging.getLogger("test.repeats")
    logger.addHandler(lines)

    def fail(key: str, exc: BaseException = denied) -> None:
        repeats.error("m", key, exc, "m: could not apply %s: %s", key, exc, logger=logger)

    try:
        for key in ("a", "b", "c", "b"):
            fail(key)
        # An S3 error is about one object: said each time, never counted.
        fail("d", RuntimeError("AccessDenied"))
        fail("e", RuntimeError("AccessDenied"))
        assert lines.said == [
            full,
            "m: could not apply d: AccessDenied",
            "m: could not apply e: AccessDenied",
        ]
        # The first interval ends: its summary.
        assert (await lines.until(4))[3:] == [
            "m: ... and 3 more failures (2 files) under /srv/m/img: Permission denied"
        ]
        fail("c")  # still failing in the second interval: counted
        assert (await lines.until(5))[4:] == [
            "m: ... and 1 more file under /srv/m/img: Permission denied"
        ]
        await asyncio.sleep(interval * 2)  # outlasts the third interval, a quiet one
        assert len(lines.said) == 5
        fail("a")  # news again
        assert lines.said[5:] == [full]
        repeats.flush()
        assert len(lines.said) == 6  # nothing was counted since: nothing to say
    finally:
        logger.removeHandler(lines)

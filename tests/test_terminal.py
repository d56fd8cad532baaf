"""`s3pull sync` and `run` on a terminal (issue 16, item 7): the progress bar has its own
line and never wraps, log lines go above it, per-file lines only with -v, and --quiet
leaves errors and the final summary.

The real command runs on a real pseudo-terminal of a chosen size against the moto
server; what it wrote is replayed the way a terminal would (carriage return, erase to
end of line, newline) to see what each line of the screen ends up holding.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import struct
import subprocess
import sys
import termios
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import AGENT_ENV, render_config, wait_until
from conftest import run_s3pull as s3pull
from s3pull.emulator import Pipeline

BAR = re.compile(r"(\[#* *\] )?\d+/\d+ files(  [\d.]+ \w+/[\d.]+ \w+)?")
BAR_TEXT = re.compile(r"\d+/\d+ files")
LOG = re.compile(r"\d\d:\d\d:\d\d (INFO|WARNING|ERROR|DEBUG) ")
FILES = 40


@dataclass
class Screen:
    lines: list[str]  # what each line shows once written
    widest: int  # the furthest column any write reached (past the width, it wrapped)


def replay(raw: str) -> Screen:
    """What a terminal shows for ``raw``: ``\\r`` returns to the line's start, ``ESC[K``
    erases to its end, ``\\n`` ends it. Escape sequences other than ``ESC[K`` are not
    expected from s3pull and would show up as text."""
    lines: list[str] = []
    line: list[str] = []
    column = widest = 0
    at = 0
    while at < len(raw):
        if raw.startswith("\x1b[K", at):
            del line[column:]
            at += 3
            continue
        char = raw[at]
        at += 1
        if char == "\r":
            column = 0
        elif char == "\n":
            lines.append("".join(line))
            line, column = [], 0
        else:
            if column < len(line):
                line[column] = char
            else:
                line.append(char)
            column += 1
            widest = max(widest, column)
    if line:
        lines.append("".join(line))
    return Screen(lines, widest)


def on_terminal(
    args: list[str], columns: int, rows: int = 24, timeout: float = 120
) -> tuple[int, str]:
    """Run `s3pull ARGS` with stdin, stdout and stderr on a new pseudo-terminal of
    ``columns`` x ``rows``; return its exit status and everything it wrote."""
    controller, terminal = os.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    process = subprocess.Popen(
        [sys.executable, "-m", "s3pull", *args],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        env={**AGENT_ENV, "TERM": "xterm"},
        start_new_session=True,
    )
    os.close(terminal)
    chunks: list[bytes] = []
    try:
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: every holder of the terminal has closed it
                break
            if not chunk:
                break
            chunks.append(chunk)
        status = process.wait(timeout)
    finally:
        os.close(controller)
        if process.poll() is None:
            process.kill()
    return status, b"".join(chunks).decode(errors="replace")


@pytest.fixture
def mirror_setup(tmp_path: Path, pipeline: Pipeline, s3: Any) -> Iterator[tuple[Path, Path]]:
    """A bucket with FILES objects and one key that is refused (a WARNING while the bar
    is up); returns (config, mirror directory)."""
    for n in range(FILES):
        s3.put_object(Bucket=pipeline.bucket, Key=f"data/dir-{n % 4}/f-{n}.txt", Body=b"x" * n)
    s3.put_object(Bucket=pipeline.bucket, Key="data/.s3pull-tmp-forged", Body=b"x")
    mirror = tmp_path / "mirror"
    table = {"name": "data", "bucket": pipeline.bucket, "prefix": "data/", "directory": mirror}
    config = tmp_path / "s3pull.toml"
    config.write_text(render_config(pipeline, tmp_path / "state", [table]))
    yield config, mirror


def assert_bar_alone(screen: Screen) -> None:
    """Every line holding the bar holds only the bar, and no log line holds any of it."""
    bars = [line for line in screen.lines if BAR_TEXT.search(line)]
    assert bars, screen.lines
    for line in bars:
        assert BAR.fullmatch(line), f"bar line with something else on it: {line!r}"
    for line in screen.lines:
        if LOG.search(line):
            assert not BAR_TEXT.search(line), f"log line glued to the bar: {line!r}"
            assert LOG.match(line), f"log line not at the start of its line: {line!r}"


def test_sync_on_a_terminal_shows_the_bar_alone_and_a_summary(
    mirror_setup: tuple[Path, Path],
) -> None:
    config, mirror = mirror_setup
    columns = 140  # wide enough for every log line here: none may wrap
    status, raw = on_terminal(["sync", "--config", str(config)], columns)
    assert status == 0, raw
    screen = replay(raw)
    assert screen.widest <= columns, raw
    assert_bar_alone(screen)
    assert screen.lines[-2] == f"[{'#' * 30}] {FILES}/{FILES} files  780 B/780 B", screen.lines
    # The bar counts the files; their own lines wait for -v. The refusal and the summary
    # are said, above the bar and below it.
    assert not [line for line in screen.lines if "downloaded data/" in line], screen.lines
    refusal = [line for line in screen.lines if "refused key" in line]
    assert len(refusal) == 1 and " WARNING " in refusal[0]
    assert f"{FILES} downloaded" in screen.lines[-1] and "1 refused" in screen.lines[-1]
    assert len(list(mirror.rglob("*.txt"))) == FILES


def test_sync_verbose_puts_each_file_above_the_bar(mirror_setup: tuple[Path, Path]) -> None:
    config, _mirror = mirror_setup
    columns = 160
    status, raw = on_terminal(["sync", "-v", "--config", str(config)], columns)
    assert status == 0, raw
    screen = replay(raw)
    assert screen.widest <= columns, raw
    assert_bar_alone(screen)
    per_file = [line for line in screen.lines if re.search(r"data: downloaded data/", line)]
    assert len(per_file) == FILES


@pytest.mark.parametrize("columns", [60, 40, 20])
def test_the_bar_fits_a_narrow_terminal(mirror_setup: tuple[Path, Path], columns: int) -> None:
    config, _mirror = mirror_setup
    status, raw = on_terminal(["sync", "--config", str(config)], columns)
    assert status == 0, raw
    screen = replay(raw)
    # Log lines are whole sentences: the terminal may fold them. The bar never wraps.
    for segment in re.split(r"[\r\n]", raw):
        if BAR_TEXT.search(segment):
            assert len(segment.replace("\x1b[K", "")) < columns, segment
    assert_bar_alone(screen)


def test_sync_quiet_says_errors_and_the_summary_only(
    mirror_setup: tuple[Path, Path], tmp_path: Path, s3: Any, pipeline: Pipeline
) -> None:
    config, mirror = mirror_setup
    # One directory that cannot be written: its two files fail (one cause, one count).
    blocked = mirror / "blocked"
    blocked.mkdir(parents=True)
    for name in ("a.txt", "b.txt"):
        s3.put_object(Bucket=pipeline.bucket, Key=f"data/blocked/{name}", Body=b"b")
    made = subprocess.run(["chattr", "+i", str(blocked)], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    try:
        status, raw = on_terminal(["sync", "--quiet", "--config", str(config)], 100)
    finally:
        subprocess.run(["chattr", "-i", str(blocked)], check=True)
    assert status == 1, raw
    lines = [line for line in replay(raw).lines if line]
    assert not [line for line in lines if BAR_TEXT.search(line)], lines  # no bar
    assert len(lines) == 3, lines
    assert "data: could not download data/blocked/" in lines[0]
    assert f"'{blocked}/" in lines[0] and " ERROR " in lines[0]
    assert f"data: ... and 1 more file under {blocked}: Operation not permitted" in lines[1]
    assert " INFO " in lines[2] and f"{FILES} downloaded" in lines[2] and "2 failed" in lines[2]


def test_run_quiet_says_errors_and_the_final_summary_only(
    tmp_path: Path, pipeline: Pipeline, s3: Any
) -> None:
    mirror = tmp_path / "mirror"
    table = {"name": "data", "bucket": pipeline.bucket, "prefix": "data/", "directory": mirror}
    config = tmp_path / "s3pull.toml"
    config.write_text(render_config(pipeline, tmp_path / "state", [table]))
    log = tmp_path / "agent.log"
    with log.open("wb") as output:
        agent = subprocess.Popen(
            [sys.executable, "-m", "s3pull", "run", "--quiet", "--config", str(config)],
            stdout=output,
            stderr=subprocess.STDOUT,
            env=AGENT_ENV,
        )
        try:

            def phase() -> str:
                result = s3pull("status", "--json", "--config", str(config))
                return str((json.loads(result.stdout)["daemon"] or {}).get("phase"))

            wait_until(lambda: phase() == "in sync", what="the agent to be in sync")
            s3.put_object(Bucket=pipeline.bucket, Key="data/report.csv", Body=b"a,b\n")
            wait_until((mirror / "report.csv").exists, what="the change to apply")
            agent.send_signal(signal.SIGTERM)
            assert agent.wait(40) == 0
        finally:
            if agent.poll() is None:
                agent.kill()
    lines = log.read_text().splitlines()
    # The start-up reconcile's totals and the last words; no "ready", no per-file line.
    assert len(lines) == 2, lines
    assert "reconciled 1 mirror(s)" in lines[0]
    assert "stopped: in sync; 1 change applied" in lines[1]

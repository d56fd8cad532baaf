"""Log lines and status output show untrusted text with control characters escaped: one
event, one line, whatever a key, a command's output or an error message holds.

The formatter is tested on ``setup_logging`` as the agent sets it up (terminal and
journald stream formats), then end to end: a real agent against moto, a key holding a
newline and a forged log line uploaded through S3 -> SNS -> SQS.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import pytest

from conftest import Agent, queue_depth, render_config, run_s3pull, wait_until
from s3pull.cli import setup_logging
from s3pull.emulator import Pipeline
from s3pull.logsafe import escape_controls
from test_agent import s3_event

FORGED = "\nERROR m: deleted data/index.html"
FORGED_CR = "\rERROR m: deleted data/index.html"


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[bool], io.StringIO]]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level

    def setup(journald: bool) -> io.StringIO:
        if journald:
            monkeypatch.setenv("JOURNAL_STREAM", "8:1234")
            # The stream path: no journal socket (tests/test_journal.py covers the socket).
            monkeypatch.setattr("s3pull.journal.JOURNAL_SOCKET", "/nonexistent/journal/socket")
        else:
            monkeypatch.delenv("JOURNAL_STREAM", raising=False)
        stream = io.StringIO()
        setup_logging(stream=stream)
        return stream

    yield setup
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain key.txt", "plain key.txt"),
        ("a\nb", "a\\nb"),
        ("a\rb", "a\\rb"),
        ("a\tb", "a\\tb"),
        ("nul\x00", "nul\\x00"),
        ("esc\x1b[2Jclear", "esc\\x1b[2Jclear"),  # a terminal escape sequence
        ("del\x7f", "del\\x7f"),
        ("nel\x85", "nel\\x85"),  # C1 "next line"
        ("ls\u2028ps\u2029", "ls\\u2028ps\\u2029"),  # Unicode line and paragraph separators
        ("m\u00fcller \u20ac \U0001f600", "m\u00fcller \u20ac \U0001f600"),  # printable stays
        ("back\\slash", "back\\slash"),
    ],
)
def test_escape_controls(text: str, shown: str) -> None:
    assert escape_controls(text) == shown


@pytest.mark.parametrize("journald", [False, True], ids=["terminal", "journald-stream"])
def test_a_forged_line_stays_inside_its_record(
    captured: Callable[[bool], io.StringIO], journald: bool
) -> None:
    stream = captured(journald)
    log = logging.getLogger("s3pull.mirror")
    log.info("%s: %s %s (%s)", "data", "downloaded", "data/x" + FORGED, "ObjectCreated:Put")
    log.warning("orders incoming/b1/ [stdout] %s", "done\r\x1b[1AERROR faked")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2, lines
    assert "downloaded data/x\\nERROR m: deleted data/index.html (ObjectCreated:Put)" in lines[0]
    assert lines[1].endswith("[stdout] done\\r\\x1b[1AERROR faked")


def test_a_traceback_is_one_record_on_one_line(captured: Callable[[bool], io.StringIO]) -> None:
    stream = captured(False)
    try:
        raise OSError("cannot write data/x" + FORGED)
    except OSError:
        logging.getLogger("s3pull").exception("message handling failed unexpectedly")
    (line,) = stream.getvalue().splitlines()
    assert "Traceback (most recent call last):\\n" in line
    assert "OSError: cannot write data/x\\nERROR m:" in line


def test_format_arguments_are_not_touched(captured: Callable[[bool], io.StringIO]) -> None:
    # The formatter escapes the text it writes; the record (what a structured journald
    # handler sends as S3PULL_KEY, for instance) keeps the key as it is.
    stream = captured(False)
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    logging.getLogger().addHandler(Keep())
    key = "data/x" + FORGED
    logging.getLogger("s3pull").info("key %s", key, extra={"S3PULL_KEY": key})
    assert seen[0].args == (key,) and key == seen[0].S3PULL_KEY
    assert stream.getvalue().count("\n") == 1


def test_keys_with_a_forged_log_line_log_one_line_each(
    s3: Any,
    sqs: Any,
    pipeline: Pipeline,
    tmp_path: Path,
    start_agent: Callable[..., Agent],
) -> None:
    mirror = tmp_path / "mirror"
    config = tmp_path / "s3pull.toml"
    config.write_text(
        render_config(
            pipeline,
            tmp_path / "state",
            [{"name": "data", "bucket": pipeline.bucket, "prefix": "data/", "directory": mirror}],
        )
    )
    agent = start_agent(config)
    agent.wait_ready()
    # Uploaded through S3 -> SNS -> SQS: a carriage return, which a terminal obeys by
    # printing the forged text over the real line. Legal in S3; the file lands inside.
    s3.put_object(Bucket=pipeline.bucket, Key="data/x" + FORGED_CR, Body=b"forged")
    # A newline is legal in S3 too, but moto's router answers 404 to any request for
    # such a key: this one arrives as S3 would send its event (URL-encoded, %0A).
    lf_key = "data/y" + FORGED
    sqs.send_message(
        QueueUrl=pipeline.queue_url,
        MessageBody=s3_event(pipeline, "ObjectCreated:Put", quote_plus(lf_key), size=6),
    )
    s3.put_object(Bucket=pipeline.bucket, Key="data/after.txt", Body=b"after")
    wait_until(lambda: (mirror / "after.txt").exists(), what="a change after the hostile keys")
    wait_until(lambda: queue_depth(pipeline, pipeline.queue_url) == 0, what="queue drained")
    agent.wait_for_log("downloaded data/after.txt")
    assert (mirror / ("x" + FORGED_CR)).read_bytes() == b"forged"

    # One physical line per event, whatever splits lines: a file, a terminal, journald.
    lines = agent.log.splitlines()
    about = [line for line in lines if "deleted data/index.html" in line]
    assert len(about) == 2, about
    for shown in (" downloaded data/x\\rERROR m: ", " data/y\\nERROR m: "):
        (line,) = [line for line in about if shown in line]
        assert shown + "deleted data/index.html (ObjectCreated:Put" in line
    assert not [line for line in lines if line.startswith("ERROR")], lines
    assert agent.stop() == 0


def test_status_shows_a_hostile_key_on_one_line(
    s3: Any,
    pipeline: Pipeline,
    tmp_path: Path,
    start_agent: Callable[..., Agent],
) -> None:
    # The last change is the hostile key: status must show it escaped, not split.
    mirror = tmp_path / "mirror"
    config = tmp_path / "s3pull.toml"
    config.write_text(
        render_config(
            pipeline,
            tmp_path / "state",
            [{"name": "data", "bucket": pipeline.bucket, "prefix": "data/", "directory": mirror}],
        )
    )
    agent = start_agent(config)
    agent.wait_ready()
    s3.put_object(Bucket=pipeline.bucket, Key="data/y" + FORGED_CR, Body=b"forged")
    wait_until(lambda: (mirror / ("y" + FORGED_CR)).exists(), what="the hostile key applied")

    def status_mentions_it() -> str | None:
        out = run_s3pull("status", "--config", str(config)).stdout
        return out if "index.html" in out else None

    out = wait_until(status_mentions_it, what="status naming the last change", timeout=20)
    lines = out.splitlines()
    assert not [line for line in lines if line.startswith("ERROR")], out
    (line,) = [line for line in lines if "index.html" in line]
    assert "last: downloaded data/y\\rERROR m: deleted data/index.html" in line
    assert agent.stop() == 0


def test_sync_dry_run_shows_a_hostile_key_on_one_line(
    s3: Any, pipeline: Pipeline, tmp_path: Path
) -> None:
    mirror = tmp_path / "mirror"
    config = tmp_path / "s3pull.toml"
    config.write_text(
        render_config(
            pipeline,
            tmp_path / "state",
            [{"name": "data", "bucket": pipeline.bucket, "prefix": "data/", "directory": mirror}],
        )
    )
    s3.put_object(Bucket=pipeline.bucket, Key="data/y" + FORGED_CR, Body=b"forged")
    out = run_s3pull("sync", "--dry-run", "--config", str(config)).stdout
    assert "\r" not in out
    assert "data: download data/y\\rERROR m: deleted data/index.html (6 B)" in out

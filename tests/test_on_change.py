"""A mirror's `on_change` command (issue 15, item 7), with a real agent on moto: changes
that settle make one run with their paths on stdin; a run at a time; a failure counted
in `status --json` while the agent goes on."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conftest import Agent, render_config, run_s3pull, wait_until
from s3pull.emulator import Pipeline
from s3pull.onchange import format_paths

RECORD_CHANGE = Path(__file__).parent / "commands" / "record_change.py"


def daemon_status(config: Path, counted: int) -> dict[str, Any]:
    """`status --json`'s daemon part once it counts ``counted`` on_change runs (the
    daemon rewrites its status file every few seconds)."""

    def read() -> dict[str, Any] | None:
        status = json.loads(run_s3pull("status", "--json", "--config", str(config)).stdout)
        daemon = status["daemon"] or {}
        runs = daemon.get("counters", {}).get("on_change_runs")
        return daemon if runs == counted else None

    return dict(wait_until(read, what=f"{counted} on_change run(s) in status"))


def runs(output: Path) -> list[dict[str, Any]]:
    if not output.exists():
        return []
    return [json.loads(line) for line in output.read_text().splitlines()]


def hook_config(
    tmp_path: Path, pipeline: Pipeline, directory: Path, command: list[str], settle: int = 2
) -> Path:
    config = tmp_path / "s3pull.toml"
    mirror = {
        "name": "site",
        "bucket": pipeline.bucket,
        "prefix": "site/",
        "directory": directory,
        "on_change": command,
        "on_change_settle_seconds": settle,
    }
    config.write_text(render_config(pipeline, tmp_path / "state", [mirror]))
    return config


def test_uploads_within_the_settle_time_make_one_run_listing_them(
    tmp_path: Path, pipeline: Pipeline, s3: Any, start_agent: Callable[..., Agent]
) -> None:
    site = tmp_path / "site"
    output = tmp_path / "runs.jsonl"
    release = tmp_path / "release"
    command = [sys.executable, str(RECORD_CHANGE), str(output), "hold", str(release)]
    # A settle time well above how far apart the three events arrive on a busy machine.
    agent = start_agent(hook_config(tmp_path, pipeline, site, command, settle=5))
    agent.wait_ready()
    assert runs(output) == []  # an empty mirror's reconcile changed nothing

    for name in ("a.txt", "sub/b.txt", "c.txt"):
        s3.put_object(Bucket=pipeline.bucket, Key=f"site/{name}", Body=name.encode())
    agent.wait_for_log("site: running on_change for 3 changed path(s)")
    [first] = wait_until(lambda: runs(output), what="the first run")
    assert first["stdin"] == "".join(f"{site / name}\n" for name in ("a.txt", "c.txt", "sub/b.txt"))
    assert first["cwd"] == str(site)
    assert first["env"] == {"S3PULL_MIRROR": "site", "S3PULL_MIRROR_DIR": str(site)}
    assert first["aws"] == []  # a clean environment, as for triggers

    # While the first run holds on, two more changes (one a deletion): they wait for it,
    # then make exactly one more run.
    s3.put_object(Bucket=pipeline.bucket, Key="site/d.txt", Body=b"d")
    s3.delete_object(Bucket=pipeline.bucket, Key="site/a.txt")
    wait_until(lambda: (site / "d.txt").exists() and not (site / "a.txt").exists(), what="both")
    assert len(runs(output)) == 1
    release.touch()
    agent.wait_for_log("site: running on_change for 2 changed path(s)")
    agent.wait_for_log("site: on_change succeeded", count=2)
    second = runs(output)[1]
    assert second["stdin"] == f"{site / 'a.txt'}\n{site / 'd.txt'}\n"
    assert agent.log.count("running on_change") == 2
    assert "site on_change [stdout] on_change saw 3 path(s)" in agent.log
    assert daemon_status(agent.config, 2)["counters"]["on_change_failures"] == 0
    assert agent.stop() == 0


def test_a_failing_command_is_counted_and_the_agent_goes_on(
    tmp_path: Path, pipeline: Pipeline, s3: Any, start_agent: Callable[..., Agent]
) -> None:
    site = tmp_path / "site"
    output = tmp_path / "runs.jsonl"
    command = [sys.executable, str(RECORD_CHANGE), str(output), "exit", "3"]
    agent = start_agent(hook_config(tmp_path, pipeline, site, command, settle=1))
    agent.wait_ready()
    s3.put_object(Bucket=pipeline.bucket, Key="site/one.txt", Body=b"1")
    agent.wait_for_log(
        "site: on_change failed: exit status 3; not retried, the next change runs it again"
    )
    s3.put_object(Bucket=pipeline.bucket, Key="site/two.txt", Body=b"2")
    wait_until(lambda: (site / "two.txt").exists(), what="the next change applied")
    agent.wait_for_log("site: on_change failed: exit status 3", count=2)
    assert [run["stdin"] for run in runs(output)] == [
        f"{site / 'one.txt'}\n",
        f"{site / 'two.txt'}\n",
    ]  # each failure ran once: nothing retried
    daemon = daemon_status(agent.config, 2)
    assert daemon["counters"]["on_change_failures"] == 2
    assert daemon["on_change"]["site"]["result"] == "failed"
    text = run_s3pull("status", "--config", str(agent.config)).stdout
    assert "on_change     site: last run failed (1 path(s))" in text
    assert "2 of 2 run(s) failed in all" in text
    assert agent.stop() == 0


def test_paths_are_one_per_line_and_odd_ones_quoted_as_git_does() -> None:
    paths = [
        Path("/srv/site/plain name.txt"),
        Path("/srv/site/two\nlines.txt"),
        Path('/srv/site/"quoted".txt'),
        Path("/srv/site/back\\slash"),
        Path("/srv/site/tab\there\x7f"),
        Path("/srv/site/café.txt"),
    ]
    assert format_paths(paths).decode().splitlines() == [
        '"/srv/site/\\"quoted\\".txt"',
        '"/srv/site/back\\\\slash"',
        '"/srv/site/tab\\there\\177"',
        '"/srv/site/two\\nlines.txt"',
        "/srv/site/café.txt",
        "/srv/site/plain name.txt",
    ]


def test_check_names_an_on_change_program_that_is_missing(
    tmp_path: Path, pipeline: Pipeline
) -> None:
    config = hook_config(tmp_path, pipeline, tmp_path / "site", ["/nonexistent/reload", "x"])
    result = run_s3pull("check", "--config", str(config))
    assert result.returncode == 1
    assert "PROBLEM mirror site: on_change /nonexistent/reload: does not exist" in result.stdout

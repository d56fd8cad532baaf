"""bench/goals.py judges issue 13's goals from result rows: hand-made rows here, shaped
like the ones the bench's cases add (bench/cases/*.py)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

# bench/ is a package beside agent/, not installed: import it from the checkout. Appended,
# so that nothing at the top of the checkout shadows an installed module.
sys.path.append(str(Path(__file__).resolve().parents[1]))

from bench.context import Results
from bench.goals import LATENCY_TODAY, Verdict, judge


def full_row(tool: str, server: str, objects: int, seconds: float, **extra: Any) -> dict[str, Any]:
    rate = objects / seconds
    return {
        "tool": tool,
        "server": server,
        "objects": objects,
        "seconds": seconds,
        "objects_per_s": rate,
        "of_ceiling": rate / 480,
        "cpu_s": seconds / 2,
        "result": "ok",
        **extra,
    }


def verdict(verdicts: list[Verdict], starts: str) -> Verdict:
    found = [v for v in verdicts if v.goal.startswith(starts)]
    assert len(found) == 1, [v.goal for v in verdicts]
    return found[0]


def test_nothing_measured_is_said_not_guessed() -> None:
    verdicts = judge(Results(), "quick")
    issue_13 = [v for v in verdicts if v.issue == 13]
    assert issue_13 and all(v.outcome == "not measured" for v in verdicts)
    assert verdict(verdicts, "s3pull sync: exec -> first request").measured == (
        "startup case not run"
    )


def test_full_sync_names_the_fastest_other_tool_per_server_size_and_s3pull_tool() -> None:
    results = Results()
    for row in (
        full_row("s3pull sync", "moto", 1000, 4.0),
        full_row("s3pull run", "moto", 1000, 2.0),
        full_row("aws s3 sync", "moto", 1000, 3.5),
        full_row("rclone sync --fast-list --checksum", "moto", 1000, 2.5),
        full_row("s5cmd sync", "moto", 1000, 9.0, result="INCOMPLETE (exit 1)"),
    ):
        results.add("full_sync", **row)
    skipped = "skipped: s3rver not installed (needs npm)"
    results.add("full_sync", tool="s3pull sync", server="s3rver", result=skipped)
    verdicts = judge(results, "quick")

    sync = verdict(verdicts, "full sync 1,000 on moto: s3pull sync ahead")
    assert sync.outcome == "NOT MET"
    # rclone is the fastest that finished; a tool that did not finish is named, not used.
    assert sync.measured == (
        "4.0 s vs 2.5 s for rclone sync --fast-list --checksum (x0.62); not measured: s5cmd sync"
    )
    run = verdict(verdicts, "full sync 1,000 on moto: s3pull run ahead")
    assert run.outcome == "met"
    assert "(x1.25)" in run.measured
    share = verdict(verdicts, "full sync 1,000 on moto: s3pull run vs moto's GET ceiling")
    assert (share.outcome, share.measured) == ("met", "104% (500 of 480 obj/s)")
    cpu = verdict(verdicts, "full sync 1,000 on moto: s3pull sync agent CPU per object")
    assert (cpu.outcome, cpu.measured) == ("NOT MET", "2.00 ms (2.0 CPU s; x2.00 of the limit)")
    s3rver = verdict(verdicts, "full sync on s3rver")
    assert (s3rver.outcome, s3rver.measured) == ("not measured", skipped)


def test_large_object_against_s5cmd_on_s3rver_says_quick_mode_size() -> None:
    results = Results()
    for tool, seconds, rss in (("s3pull sync", 2.0, 87.0), ("s5cmd cp", 1.0, 61.0)):
        results.add(
            "large",
            tool=tool,
            server="s3rver",
            mib=64,
            seconds=seconds,
            mib_per_s=64 / seconds,
            peak_rss_mb=rss,
            result="ok",
        )
    verdicts = judge(results, "quick")
    ahead = verdict(verdicts, "large object (64 MiB) on s3rver: s3pull sync ahead of s5cmd")
    assert ahead.outcome == "NOT MET"
    assert ahead.measured == "32 vs 64 MiB/s (x0.50) (quick mode; the goal names 1,024 MiB)"
    rss = verdict(verdicts, "large object (64 MiB) on s3rver: s3pull sync peak RSS")
    assert rss.outcome == "met"
    assert verdict(verdicts, "large object on moto").outcome == "not measured"


def test_latency_compares_with_today_only_in_the_same_mode() -> None:
    def latency(changes: int, p50: float, p99: float) -> Results:
        results = Results()
        results.add(
            "latency",
            what="message visible -> file renamed",
            changes=changes,
            p50_ms=p50,
            p99_ms=p99,
            missed=0,
        )
        return results

    quick = judge(latency(200, 10.0, 20.0), "quick")
    p50 = verdict(quick, "latency p50")
    assert p50.outcome == "not measured"
    assert "not comparable: quick mode, 200 changes" in p50.measured

    full = judge(latency(LATENCY_TODAY.changes, 15.0, 30.0), "full")
    assert verdict(full, "latency p50").outcome == "NOT MET"  # 15.0 > 14.9
    assert verdict(full, "latency p50").measured == "15.0 ms vs 14.9 ms (x1.01)"
    assert verdict(full, "latency p99").outcome == "met"


def test_notification_path_says_when_it_ran_fewer_changes() -> None:
    results = Results()
    results.add(
        "throughput",
        changes=300,
        changes_per_s=95.0,
        ceiling_per_s=100.0,
        of_ceiling=0.95,
        agent_cpu_ms_per_change=5.1,
    )
    verdicts = judge(results, "quick")
    share = verdict(verdicts, "notification path: throughput")
    assert share.outcome == "met"
    assert share.measured.endswith("; 300 changes (quick mode), not 2,000")
    assert verdict(verdicts, "notification path: agent CPU").outcome == "NOT MET"


def test_startup_shows_the_other_tools_beside_s3pull() -> None:
    results = Results()
    for tool, ms in (("s3pull sync", 150.0), ("aws s3 sync", 407.0), ("s5cmd sync", 29.0)):
        results.add(
            "startup",
            tool=tool,
            server="moto",
            runs=5,
            first_request_ms=ms,
            wall_s=0.5,
            peak_rss_mb=60.0,
            result="ok",
        )
    results.add("startup", tool="rclone sync", server="moto", result="skipped: rclone")
    startup = verdict(judge(results, "quick"), "s3pull sync: exec -> first request")
    assert startup.outcome == "met"
    assert startup.measured == (
        "150 ms (x0.75 of the limit); whole run 0.50 s, 60 MB;"
        " beside it: aws s3 sync 407 ms, s5cmd sync 29 ms"
    )

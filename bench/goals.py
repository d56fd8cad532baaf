"""Issue 13's goals, and issue 7's that still apply, judged from the measured rows: met or
not met, each with its ratio.

Benchmarks measure; nothing here fails the run. A goal whose inputs were not measured
(a skipped tool, a missing s3rver, a case left out with ``--only``, a size quick mode
leaves out) says so and why instead of guessing; a goal measured on fewer items than it
names (quick mode) is judged and says so.

Ratios read one way throughout: for "ahead of" goals, how many times faster s3pull is (the
other tool's time over s3pull's: above 1 is ahead); for "at most" goals, measured / limit
(at or below 1 is met).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .context import Results

__all__ = ["GOALS_TITLE", "LATENCY_TODAY", "LatencyBaseline", "Verdict", "judge"]

Outcome = Literal["met", "NOT MET", "not measured", "reported"]

GOALS_TITLE = "Goals (issue 13, and issue 7's that still apply)"

# Issue 13's targets.
CEILING_SHARE = 0.9  # of the server's ceiling, for full syncs and the notification path
SYNC_CPU_MS = 1.0  # agent CPU per object in a full sync
LARGE_MIB = 1024  # the large object the goal names
LARGE_RSS_MB = 100.0
NOTIFY_CHANGES = 2000  # the throughput goal is over this many changes
NOTIFY_CPU_MS = 2.0  # agent CPU per change on the notification path
FIRST_REQUEST_S = 0.2  # `s3pull sync`, exec -> first request
IDLE_RSS_MB = 60.0

S3PULL_TOOLS = ("s3pull sync", "s3pull run")
SERVERS = ("moto", "s3rver")
# The bench case (``--only`` name) that measures each server's full syncs and large object.
SYNC_CASE = {"moto": "sync", "s3rver": "fast-server"}
LARGE_CASE = {"moto": "large", "s3rver": "fast-server"}


@dataclass(frozen=True, slots=True)
class LatencyBaseline:
    """Latency "today", for issue 13's "no worse than today": one recorded run."""

    date: str
    source: str
    mode: Literal["quick", "full"]
    changes: int
    p50_ms: float
    p99_ms: float


# The last full run before issue 13 (message visible -> file renamed). Only a run of the
# same mode and size compares: quick mode's 200 changes on a CI machine are another
# measurement, and no quick-mode run was ever recorded to compare with.
LATENCY_TODAY = LatencyBaseline(
    date="2026-11-30",
    source="bench/README.md, Results (make bench, full mode)",
    mode="full",
    changes=1000,
    p50_ms=14.9,
    p99_ms=35.5,
)


@dataclass(frozen=True, slots=True)
class Verdict:
    goal: str
    target: str
    measured: str
    outcome: Outcome
    issue: int = 13

    def row(self) -> dict[str, Any]:
        return {
            "issue": str(self.issue),
            "goal": self.goal,
            "target": self.target,
            "measured": self.measured,
            "verdict": self.outcome,
        }


def _met(condition: bool) -> Outcome:
    return "met" if condition else "NOT MET"


def _find(rows: Sequence[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    for row in rows:
        if all(row.get(key) == value for key, value in match.items()):
            return row
    return None


def _ok(row: dict[str, Any]) -> bool:
    return str(row.get("result", "ok")).startswith("ok")


def _why_not(row: dict[str, Any] | None, case: str) -> str:
    """Why a row has no numbers: its own skip reason, or the case did not run."""
    if row is None:
        return f"{case} case not run"
    return str(row.get("result") or "no numbers")


def _of_limit(value: float, limit: float) -> str:
    return f"x{value / limit:.2f} of the limit"


# -- full sync ------------------------------------------------------------------------


def _full_sync(results: Results, _mode: str) -> list[Verdict]:
    rows = results.rows("full_sync")
    ahead: list[Verdict] = []
    ceiling: list[Verdict] = []
    cpu: list[Verdict] = []
    for server in SERVERS:
        on = [r for r in rows if r.get("server") == server]
        # The 50,000-object bucket is synced by s3pull alone, as the one-change seed.
        timed = [r for r in on if r.get("seconds") is not None and "seed" not in r["result"]]
        sizes = sorted({r["objects"] for r in timed})
        if not sizes:
            skipped = next((r for r in on if r.get("seconds") is None), None)
            ahead.append(
                Verdict(
                    f"full sync on {server}: s3pull ahead of every other tool",
                    "faster than each",
                    _why_not(skipped, SYNC_CASE[server]),
                    "not measured",
                )
            )
            continue
        for size in sizes:
            at = [r for r in on if r.get("objects") == size]
            for tool in S3PULL_TOOLS:
                mine = _find(at, tool=tool)
                ahead.append(_ahead(server, size, tool, mine, at))
                if mine is None or mine.get("seconds") is None:
                    continue
                if server == "moto":
                    ceiling.append(_share_of_ceiling(size, tool, mine))
                cpu.append(_cpu_per_object(server, size, tool, mine))
    return ahead + ceiling + cpu


def _ahead(
    server: str, size: int, tool: str, mine: dict[str, Any] | None, at: list[dict[str, Any]]
) -> Verdict:
    goal = f"full sync {size:,} on {server}: {tool} ahead of every other tool"
    target = "faster than each"
    if mine is None or mine.get("seconds") is None:
        return Verdict(goal, target, _why_not(mine, SYNC_CASE[server]), "not measured")
    others = [r for r in at if r["tool"] not in S3PULL_TOOLS]
    timed = [r for r in others if r.get("seconds") is not None and _ok(r)]
    # "Every other tool": one that could not be measured leaves the verdict open-ended.
    missing = [r["tool"] for r in others if r not in timed]
    unmeasured = f"; not measured: {', '.join(missing)}" if missing else ""
    if not _ok(mine):
        return Verdict(goal, target, f"{tool}: {mine['result']}", "NOT MET")
    if not timed:
        return Verdict(goal, target, f"no other tool measured{unmeasured}", "not measured")
    fastest = min(timed, key=lambda r: r["seconds"])
    ratio = fastest["seconds"] / mine["seconds"]
    return Verdict(
        goal,
        target,
        f"{mine['seconds']:.1f} s vs {fastest['seconds']:.1f} s for {fastest['tool']}"
        f" (x{ratio:.2f}){unmeasured}",
        _met(ratio > 1.0),
    )


def _share_of_ceiling(size: int, tool: str, mine: dict[str, Any]) -> Verdict:
    return Verdict(
        f"full sync {size:,} on moto: {tool} vs moto's GET ceiling",
        f">= {CEILING_SHARE:.0%} of ceiling",
        f"{mine['of_ceiling']:.0%} ({mine['objects_per_s']:.0f} of"
        f" {mine['objects_per_s'] / mine['of_ceiling']:.0f} obj/s)",
        _met(mine["of_ceiling"] >= CEILING_SHARE),
    )


def _cpu_per_object(server: str, size: int, tool: str, mine: dict[str, Any]) -> Verdict:
    # The whole process's CPU from wait4 (start-up included), over the objects it synced.
    ms = mine["cpu_s"] * 1000 / size
    return Verdict(
        f"full sync {size:,} on {server}: {tool} agent CPU per object",
        f"<= {SYNC_CPU_MS:.1f} ms/object",
        f"{ms:.2f} ms ({mine['cpu_s']:.1f} CPU s; {_of_limit(ms, SYNC_CPU_MS)})",
        _met(ms <= SYNC_CPU_MS),
    )


# -- one large object -----------------------------------------------------------------


def _quick_size(mib: int) -> str:
    return "" if mib >= LARGE_MIB else f" (quick mode; the goal names {LARGE_MIB:,} MiB)"


def _large(results: Results, _mode: str) -> list[Verdict]:
    rows = results.rows("large")
    verdicts: list[Verdict] = []
    mine = _find(rows, tool="s3pull sync", server="s3rver")
    if mine is None or mine.get("seconds") is None:
        why = _why_not(mine or _find(rows, server="s3rver"), LARGE_CASE["s3rver"])
        verdicts.append(
            Verdict(
                "large object on s3rver: s3pull sync ahead of s5cmd cp",
                "faster",
                why,
                "not measured",
            )
        )
    else:
        goal = f"large object ({mine['mib']:,} MiB) on s3rver: s3pull sync ahead of s5cmd cp"
        s5cmd = _find(rows, tool="s5cmd cp", server="s3rver")
        if not _ok(mine):
            verdicts.append(Verdict(goal, "faster", f"s3pull sync: {mine['result']}", "NOT MET"))
        elif s5cmd is None or s5cmd.get("seconds") is None or not _ok(s5cmd):
            verdicts.append(
                Verdict(
                    goal, "faster", f"s5cmd cp: {_why_not(s5cmd, 'fast-server')}", "not measured"
                )
            )
        else:
            ratio = s5cmd["seconds"] / mine["seconds"]
            verdicts.append(
                Verdict(
                    goal,
                    "faster",
                    f"{mine['mib_per_s']:.0f} vs {s5cmd['mib_per_s']:.0f} MiB/s"
                    f" (x{ratio:.2f}){_quick_size(mine['mib'])}",
                    _met(ratio > 1.0),
                )
            )
    for server in SERVERS:
        mine = _find(rows, tool="s3pull sync", server=server)
        if mine is None or mine.get("peak_rss_mb") is None:
            why = _why_not(mine or _find(rows, server=server), LARGE_CASE[server])
            verdicts.append(
                Verdict(
                    f"large object on {server}: s3pull sync peak RSS",
                    f"<= {LARGE_RSS_MB:.0f} MB",
                    why,
                    "not measured",
                )
            )
            continue
        rss = mine["peak_rss_mb"]
        verdicts.append(
            Verdict(
                f"large object ({mine['mib']:,} MiB) on {server}: s3pull sync peak RSS",
                f"<= {LARGE_RSS_MB:.0f} MB",
                f"{rss:.0f} MB ({_of_limit(rss, LARGE_RSS_MB)}){_quick_size(mine['mib'])}",
                _met(rss <= LARGE_RSS_MB),
            )
        )
    return verdicts


# -- notification path ----------------------------------------------------------------


def _throughput(results: Results, _mode: str) -> list[Verdict]:
    rows = results.rows("throughput")
    share_goal = "notification path: throughput vs its ceiling"
    cpu_goal = "notification path: agent CPU per change"
    share_target = f">= {CEILING_SHARE:.0%} of ceiling over {NOTIFY_CHANGES:,} changes"
    cpu_target = f"<= {NOTIFY_CPU_MS:.0f} ms/change"
    if not rows:
        return [
            Verdict(share_goal, share_target, "throughput case not run", "not measured"),
            Verdict(cpu_goal, cpu_target, "throughput case not run", "not measured"),
        ]
    row = rows[0]
    changes = row["changes"]
    fewer = (
        f"; {changes:,} changes (quick mode), not {NOTIFY_CHANGES:,}"
        if changes < NOTIFY_CHANGES
        else ""
    )
    ms = row["agent_cpu_ms_per_change"]
    return [
        Verdict(
            f"{share_goal} ({changes:,} changes)",
            share_target,
            f"{row['of_ceiling']:.0%} ({row['changes_per_s']:.1f} of"
            f" {row['ceiling_per_s']:.1f} changes/s){fewer}",
            _met(row["of_ceiling"] >= CEILING_SHARE),
        ),
        Verdict(
            f"{cpu_goal} ({changes:,} changes)",
            cpu_target,
            f"{ms:.2f} ms ({_of_limit(ms, NOTIFY_CPU_MS)}){fewer}",
            _met(ms <= NOTIFY_CPU_MS),
        ),
    ]


def _latency(results: Results, mode: str) -> list[Verdict]:
    row = _find(results.rows("latency"), what="message visible -> file renamed")
    today = LATENCY_TODAY
    verdicts = []
    for name, baseline in (("p50", today.p50_ms), ("p99", today.p99_ms)):
        target = f"<= today: {baseline} ms ({today.date}, {today.mode} mode)"
        if row is None:
            goal = f"latency {name}, message visible -> renamed"
            verdicts.append(Verdict(goal, target, "latency case not run", "not measured"))
            continue
        goal = f"latency {name}, message visible -> renamed ({row['changes']:,} changes)"
        measured = row[f"{name}_ms"]
        if measured is None or math.isnan(measured):
            verdicts.append(Verdict(goal, target, "no change landed", "NOT MET"))
        elif mode != today.mode or row["changes"] != today.changes:
            verdicts.append(
                Verdict(
                    goal,
                    target,
                    f"{measured:.1f} ms; not comparable: {mode} mode, {row['changes']:,}"
                    f" changes (the baseline: {today.mode} mode, {today.changes:,})",
                    "not measured",
                )
            )
        else:
            missed = f"; {row['missed']} missed" if row.get("missed") else ""
            verdicts.append(
                Verdict(
                    goal,
                    target,
                    f"{measured:.1f} ms vs {baseline} ms (x{measured / baseline:.2f}){missed}",
                    _met(measured <= baseline and not row.get("missed")),
                )
            )
    return verdicts


# -- start-up and idle ----------------------------------------------------------------


def _startup(results: Results, _mode: str) -> list[Verdict]:
    rows = results.rows("startup")
    mine = _find(rows, tool="s3pull sync")
    goal = "s3pull sync: exec -> first request"
    target = f"< {FIRST_REQUEST_S} s"
    if mine is None or mine.get("first_request_ms") is None:
        return [Verdict(goal, target, _why_not(mine, "startup"), "not measured")]
    ms = mine["first_request_ms"]
    beside = [
        f"{r['tool'].split(' --')[0]} {r['first_request_ms']:.0f} ms"
        for r in rows
        if r["tool"] != "s3pull sync" and r.get("first_request_ms") is not None
    ]
    failed = "" if _ok(mine) else f"; {mine['result']}"
    return [
        Verdict(
            f"{goal} (median of {mine['runs']})",
            target,
            f"{ms:.0f} ms ({_of_limit(ms / 1000, FIRST_REQUEST_S)});"
            f" whole run {mine['wall_s']:.2f} s, {mine['peak_rss_mb']:.0f} MB"
            + (f"; beside it: {', '.join(beside)}" if beside else "")
            + failed,
            _met(ms / 1000 < FIRST_REQUEST_S and _ok(mine)),
        )
    ]


def _idle(results: Results, _mode: str) -> list[Verdict]:
    rows = results.rows("idle")
    if not rows:
        return [
            Verdict("idle RSS", f"<= {IDLE_RSS_MB:.0f} MB", "idle case not run", "not measured"),
            Verdict("idle requests", "<= 3 requests/min", "idle case not run", "not measured", 7),
        ]
    row = rows[0]
    window = f"over {row['seconds']:.0f} s"
    rss = row["max_rss_mb"]
    return [
        Verdict(
            f"idle RSS ({window})",
            f"<= {IDLE_RSS_MB:.0f} MB",
            f"{rss:.0f} MB ({_of_limit(rss, IDLE_RSS_MB)})",
            _met(rss <= IDLE_RSS_MB),
        ),
        Verdict(
            f"idle requests ({window})",
            "<= 3 requests/min",
            f"{row['requests_per_min']:.1f}/min",
            _met(row["requests_per_min"] <= 3),
            7,
        ),
    ]


# -- issue 7's goals that issue 13 leaves standing ------------------------------------


def _one_request_per_object(results: Results, _mode: str) -> list[Verdict]:
    verdicts = []
    for row in results.rows("full_sync"):
        if row["tool"] != "s3pull sync" or row.get("requests") is None:
            continue
        size = row["objects"]
        pages = -(-size // 1000)
        verdicts.append(
            Verdict(
                f"full sync {size:,} on moto: one request per object",
                f"GETs = objects, requests <= objects + {pages} list page(s)",
                f"{row['gets']:,} GETs, {row['requests']:,} requests"
                f" ({row['requests_per_object']:.3f}/object)",
                _met(row["gets"] == size and row["requests"] <= size + pages + 1),
                7,
            )
        )
    return verdicts


def _one_change(results: Results, _mode: str) -> list[Verdict]:
    mine = {
        r["objects"]: r["ms"]
        for r in results.rows("one_change")
        if r["tool"] == "s3pull run (event)" and r.get("ms") is not None
    }
    if not mine:
        return [Verdict("one change", "", "sync case not run", "not measured", 7)]
    small, large = min(mine), max(mine)
    verdicts = []
    if small != large:
        ratio = mine[large] / mine[small]
        verdicts.append(
            Verdict(
                "one change: constant for s3pull",
                f"{large:,} objects within 1.5x (or +5 ms) of {small:,}",
                f"{mine[small]:.0f} ms at {small:,}, {mine[large]:.0f} ms at {large:,}"
                f" (x{ratio:.2f})",
                _met(ratio <= 1.5 or mine[large] - mine[small] <= 5),
                7,
            )
        )
    else:
        verdicts.append(
            Verdict(
                "one change: constant for s3pull",
                "same time at every bucket size",
                f"{mine[small]:.0f} ms at {small:,} only (quick mode)",
                "not measured",
                7,
            )
        )
    size = 10000 if 10000 in mine else large
    aws = _find(results.rows("one_change"), tool="aws s3 sync --exact-timestamps", objects=size)
    aws_ms = None if aws is None else aws.get("ms")
    if aws_ms is None:
        verdicts.append(
            Verdict(
                "one change: 20x below aws s3 sync",
                ">= 20x",
                _why_not(aws, "sync"),
                "not measured",
                7,
            )
        )
    else:
        ratio = aws_ms / mine[size]
        note = "" if size == 10000 else f" (at {size:,}: quick mode)"
        verdicts.append(
            Verdict(
                f"one change at {size:,}: s3pull vs aws s3 sync --exact-timestamps",
                ">= 20x faster",
                f"{mine[size]:.0f} ms vs {aws_ms:.0f} ms (x{ratio:.0f}){note}",
                _met(ratio >= 20),
                7,
            )
        )
    return verdicts


def _fleet(results: Results, _mode: str) -> list[Verdict]:
    rows = results.rows("fleet")
    if not rows:
        return [Verdict("fleet", "", "fleet case not run", "not measured", 7)]
    row = rows[0]
    worst = row.get("all_ms_max")
    return [
        Verdict(
            f"fleet: {row['agents']} agents, time until all applied a change",
            "(no target: reported)",
            f"p50 {row['all_ms_p50']:.0f} ms, max {worst:.0f} ms"
            if worst is not None
            else f"{row['missed']} missed",
            "reported",
            7,
        )
    ]


# In the order of issue 13's goal list, then issue 7's. Replaced from issue 7: the
# absolute latency limits (now "no worse than today"), the throughput share (now with
# CPU per change), and "large object no slower than aws s3 cp" (now s5cmd, on s3rver).
JUDGES: list[Callable[[Results, str], list[Verdict]]] = [
    _full_sync,
    _large,
    _throughput,
    _latency,
    _startup,
    _idle,
    _one_request_per_object,
    _one_change,
    _fleet,
]


def judge(results: Results, mode: str) -> list[Verdict]:
    """Every goal's verdict; ``mode`` ("quick" or "full") decides what compares with the
    recorded baselines."""
    verdicts = [verdict for judge_ in JUDGES for verdict in judge_(results, mode)]
    # Issue 13's first, each issue's in its goal-list order (sorted is stable).
    return sorted(verdicts, key=lambda verdict: -verdict.issue)

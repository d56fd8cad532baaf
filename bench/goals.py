"""Issue 7's goals, judged from the measured rows: met or not met, with the ratio.

Benchmarks measure; nothing here fails the run. A goal whose inputs were not measured
(a skipped tool, a size quick mode leaves out) says so instead of guessing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from .context import Results

__all__ = ["Verdict", "judge"]

Outcome = Literal["met", "NOT MET", "not measured", "reported"]


@dataclass(frozen=True, slots=True)
class Verdict:
    goal: str
    target: str
    measured: str
    outcome: Outcome

    def row(self) -> dict[str, Any]:
        return {
            "goal": self.goal,
            "target": self.target,
            "measured": self.measured,
            "verdict": self.outcome,
        }


def _met(condition: bool) -> Outcome:
    return "met" if condition else "NOT MET"


def _find(results: Results, section: str, **match: Any) -> dict[str, Any] | None:
    for row in results.rows(section):
        if all(row.get(key) == value for key, value in match.items()):
            return row
    return None


def _measured(row: dict[str, Any] | None, key: str) -> float | None:
    if row is None or row.get(key) is None:
        return None
    return float(row[key])


def _full_sync(results: Results) -> list[Verdict]:
    rows = [r for r in results.rows("full_sync") if r.get("server") == "moto" and "seconds" in r]
    sizes = sorted({r["objects"] for r in rows if "seed" not in r.get("result", "")})
    if not sizes:
        return [Verdict("full sync", "", "", "not measured")]
    size = sizes[-1]
    at = [r for r in rows if r["objects"] == size]
    verdicts = []
    for tool in ("s3pull sync", "s3pull run"):
        mine = next((r for r in at if r["tool"] == tool), None)
        if mine is None:
            continue
        verdicts.append(
            Verdict(
                f"full sync {size:,}: {tool} vs moto's GET ceiling",
                ">= 90% of ceiling",
                f"{mine['of_ceiling'] * 100:.0f}% ({mine['objects_per_s']:.0f} of"
                f" {mine['objects_per_s'] / mine['of_ceiling']:.0f} obj/s)",
                _met(mine["of_ceiling"] >= 0.9),
            )
        )
    mine = next((r for r in at if r["tool"] == "s3pull sync"), None)
    others = [r for r in at if not r["tool"].startswith("s3pull")]
    if mine is not None and others:
        fastest = min(others, key=lambda r: r["seconds"])
        ratio = fastest["seconds"] / mine["seconds"]
        verdicts.append(
            Verdict(
                f"full sync {size:,}: s3pull sync ahead of every other tool",
                "faster than each",
                f"{mine['seconds']:.1f} s vs {fastest['seconds']:.1f} s for {fastest['tool']}"
                f" (x{ratio:.2f})",
                _met(ratio > 1.0),
            )
        )
    if mine is not None and mine.get("requests") is not None:
        pages = -(-size // 1000)
        verdicts.append(
            Verdict(
                f"full sync {size:,}: one request per object",
                f"GETs = objects, requests <= objects + {pages} list page(s)",
                f"{mine['gets']:,} GETs, {mine['requests']:,} requests"
                f" ({mine['requests_per_object']:.3f}/object)",
                _met(mine["gets"] == size and mine["requests"] <= size + pages + 1),
            )
        )
    return verdicts


def _one_change(results: Results) -> list[Verdict]:
    mine = {
        r["objects"]: r["ms"]
        for r in results.rows("one_change")
        if r["tool"] == "s3pull run (event)" and r.get("ms") is not None
    }
    if not mine:
        return [Verdict("one change", "", "", "not measured")]
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
            )
        )
    else:
        verdicts.append(
            Verdict(
                "one change: constant for s3pull",
                "same time at every bucket size",
                f"{mine[small]:.0f} ms at {small:,} only (quick mode)",
                "not measured",
            )
        )
    size = 10000 if 10000 in mine else large
    aws = _find(results, "one_change", tool="aws s3 sync --exact-timestamps", objects=size)
    aws_ms = _measured(aws, "ms")
    if aws_ms is None:
        verdicts.append(
            Verdict(
                "one change: 20x below aws s3 sync", ">= 20x", "aws not measured", "not measured"
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
            )
        )
    return verdicts


def _latency(results: Results) -> list[Verdict]:
    row = _find(results, "latency", what="message visible -> file renamed")
    if row is None:
        return [Verdict("latency", "", "", "not measured")]
    return [
        Verdict(
            f"latency p50, message visible -> renamed ({row['changes']:,} changes)",
            "<= 20 ms",
            f"{row['p50_ms']:.1f} ms",
            _met(row["p50_ms"] <= 20),
        ),
        Verdict(
            f"latency p99, message visible -> renamed ({row['changes']:,} changes)",
            "<= 100 ms",
            f"{row['p99_ms']:.1f} ms",
            _met(row["p99_ms"] <= 100),
        ),
    ]


def _throughput(results: Results) -> list[Verdict]:
    rows = results.rows("throughput")
    if not rows:
        return [Verdict("throughput", "", "", "not measured")]
    row = rows[0]
    return [
        Verdict(
            "sustained throughput vs the notification-path ceiling",
            ">= 90% of ceiling",
            f"{row['of_ceiling'] * 100:.0f}% ({row['changes_per_s']:.1f} of"
            f" {row['ceiling_per_s']:.1f} changes/s)",
            _met(row["of_ceiling"] >= 0.9),
        )
    ]


def _large(results: Results) -> list[Verdict]:
    verdicts = [v for server in ("moto", "s3rver") for v in _large_on(results, server)]
    return verdicts or [Verdict("large object", "", "", "not measured")]


def _large_on(results: Results, server: str) -> list[Verdict]:
    """Judged per server: moto punishes ranged readers (it reads the whole object per
    range), so the verdict on a server that seeks matters as much."""
    mine = _find(results, "large", tool="s3pull sync", server=server)
    if mine is None or mine.get("seconds") is None:
        return []
    verdicts = [
        Verdict(
            f"large object ({mine['mib']:,} MiB, {server}): s3pull peak RSS",
            "<= 100 MB",
            f"{mine['peak_rss_mb']:.0f} MB",
            _met(mine["peak_rss_mb"] <= 100),
        )
    ]
    aws = _find(results, "large", tool="aws s3 cp", server=server)
    if aws is None or aws.get("seconds") is None:
        verdicts.append(
            Verdict("large object vs aws s3 cp", "", "aws not measured", "not measured")
        )
    else:
        ratio = aws["seconds"] / mine["seconds"]
        verdicts.append(
            Verdict(
                f"large object ({mine['mib']:,} MiB, {server}): no slower than aws s3 cp",
                "s3pull time <= aws time",
                f"{mine['seconds']:.1f} s vs {aws['seconds']:.1f} s (x{ratio:.2f})",
                _met(ratio >= 1.0),
            )
        )
    return verdicts


def _idle(results: Results) -> list[Verdict]:
    rows = results.rows("idle")
    if not rows:
        return [Verdict("idle", "", "", "not measured")]
    row = rows[0]
    window = f"over {row['seconds']:.0f} s"
    return [
        Verdict(
            f"idle requests ({window})",
            "<= 3 requests/min",
            f"{row['requests_per_min']:.1f}/min",
            _met(row["requests_per_min"] <= 3),
        ),
        Verdict(
            f"idle RSS ({window})",
            "<= 60 MB",
            f"{row['max_rss_mb']:.0f} MB",
            _met(row["max_rss_mb"] <= 60),
        ),
    ]


def _fleet(results: Results) -> list[Verdict]:
    rows = results.rows("fleet")
    if not rows:
        return [Verdict("fleet", "", "", "not measured")]
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
        )
    ]


JUDGES: list[Callable[[Results], list[Verdict]]] = [
    _full_sync,
    _one_change,
    _latency,
    _throughput,
    _large,
    _idle,
    _fleet,
]


def judge(results: Results) -> list[Verdict]:
    return [verdict for judge_ in JUDGES for verdict in judge_(results)]

"""Tables (Markdown, so the README can take them as printed) and the JSON file."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .context import Results
from .goals import GOALS_TITLE, Verdict

__all__ = ["render", "write_json"]

Format = Callable[[Any], str]


def _number(decimals: int) -> Format:
    def fmt(value: Any) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "—"
        if isinstance(value, int):
            return f"{value:,}"
        return f"{value:,.{decimals}f}"

    return fmt


def _percent(value: Any) -> str:
    return "—" if value is None else f"{value * 100:.0f}%"


def _dollars(value: Any) -> str:
    return "—" if value is None else f"${value:.4f}"


def _text(value: Any) -> str:
    return "—" if value is None else str(value)


@dataclass(frozen=True, slots=True)
class Column:
    key: str
    header: str
    fmt: Format = _text


N0, N1, N2, N3 = _number(0), _number(1), _number(2), _number(3)

SECTIONS: dict[str, tuple[str, list[Column]]] = {
    "ceilings": (
        "Server ceilings (raw HTTP client, same run)",
        [Column("what", "measured"), Column("rate", "rate", N0), Column("unit", "unit")],
    ),
    "startup": (
        "Start-up: exec -> first request at the server (empty bucket, median of the runs)",
        [
            Column("tool", "tool"),
            Column("runs", "runs", N0),
            Column("first_request_ms", "ms to first request", N0),
            Column("first_request", "first request"),
            Column("wall_s", "whole run s", N2),
            Column("peak_rss_mb", "peak RSS MB", N0),
            Column("cpu_s", "CPU s", N2),
            Column("requests", "requests", N0),
            Column("result", "result"),
        ],
    ),
    "full_sync": (
        "Full sync of small objects (2 KiB) into an empty directory",
        [
            Column("tool", "tool"),
            Column("server", "server"),
            Column("objects", "objects", N0),
            Column("seconds", "s", N1),
            Column("objects_per_s", "obj/s", N0),
            Column("of_ceiling", "of GET ceiling", _percent),
            Column("requests_per_object", "req/obj", N2),
            Column("gets", "GETs", N0),
            Column("lists", "LISTs", N0),
            Column("other_requests", "other", N0),
            Column("peak_rss_mb", "peak RSS MB", N0),
            Column("cpu_s", "CPU s", N1),
            Column("result", "result"),
        ],
    ),
    "one_change": (
        "One same-size overwrite in a bucket of N objects"
        " (s3pull run: median, message visible -> file renamed)",
        [
            Column("tool", "tool"),
            Column("objects", "objects", N0),
            Column("ms", "ms", N0),
            Column("ms_from_put", "ms from PUT", N0),
            Column("requests", "requests", N0),
            Column("peak_rss_mb", "peak RSS MB", N0),
            Column("result", "result"),
        ],
    ),
    "latency": (
        "Latency of single changes through S3 -> SNS -> SQS -> s3pull run",
        [
            Column("what", "from"),
            Column("changes", "changes", N0),
            Column("p50_ms", "p50 ms", N1),
            Column("p90_ms", "p90 ms", N1),
            Column("p99_ms", "p99 ms", N1),
            Column("max_ms", "max ms", N1),
            Column("missed", "missed", N0),
        ],
    ),
    "throughput": (
        "Sustained throughput through the notification path",
        [
            Column("changes", "changes", N0),
            Column("seconds", "s", N1),
            Column("changes_per_s", "changes/s", N1),
            Column("ceiling_per_s", "ceiling/s", N1),
            Column("of_ceiling", "of ceiling", _percent),
            Column("lag_after_last_put_s", "done s after last PUT", N2),
            Column("agent_cpu_ms_per_change", "agent CPU ms/change", N2),
            Column("requests_per_change", "req/change", N2),
            Column("agent_peak_rss_mb", "peak RSS MB", N0),
        ],
    ),
    "large": (
        "One large object",
        [
            Column("tool", "tool"),
            Column("server", "server"),
            Column("mib", "MiB", N0),
            Column("seconds", "s", N1),
            Column("mib_per_s", "MiB/s", N0),
            Column("peak_rss_mb", "peak RSS MB", N0),
            Column("cpu_s", "CPU s", N1),
            Column("requests", "requests", N0),
            Column("server_peak_rss_mb", "moto peak RSS MB", N0),
            Column("result", "result"),
        ],
    ),
    "idle": (
        "Idle agent (default 20 s long poll)",
        [
            Column("seconds", "window s", N0),
            Column("requests_per_min", "requests/min", N1),
            Column("cpu_s", "CPU s", N2),
            Column("cpu_s_per_min", "CPU s/min", N3),
            Column("rss_mb", "RSS MB", N0),
            Column("max_rss_mb", "max RSS MB", N0),
        ],
    ),
    "publishing": (
        "State publishing (fleet view): requests on the agent's own queue",
        [
            Column("window", "window"),
            Column("seconds", "s", N0),
            Column("changes_per_s", "changes/s", N1),
            Column("tag_requests", "TagQueue", N0),
            Column("attribute_requests", "GetQueueAttributes", N0),
            Column("requests_per_hour", "publishing req/hour", N1),
            Column("dollars_per_month", "$/server/month", _dollars),
            Column("receives_per_hour", "ReceiveMessage/hour", N0),
        ],
    ),
    "fleet": (
        "Fleet: agents on this machine, one queue each, one SNS topic",
        [
            Column("agents", "agents", N0),
            Column("changes", "changes", N0),
            Column("start_seconds", "all ready s", N1),
            Column("first_ms", "first applied ms (p50)", N0),
            Column("all_ms_p50", "all applied ms (p50)", N0),
            Column("all_ms_max", "all applied ms (max)", N0),
            Column("from_visible_p50_ms", "visible -> renamed p50 ms", N0),
            Column("idle_rss_total_mb", "fleet RSS MB", N0),
            Column("missed", "missed", N0),
            Column("fleet_wait_s", "fleet wait s", N1),
            Column("fleet_wait_exit", "fleet wait exit", N0),
        ],
    ),
}


def table(columns: Sequence[Column], rows: Sequence[dict[str, Any]]) -> str:
    cells = [[column.header for column in columns]]
    for row in rows:
        cells.append([column.fmt(row.get(column.key)) for column in columns])
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(cells[0], widths, strict=True)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for line in cells[1:]:
        lines.append(
            "| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |"
        )
    return "\n".join(lines)


def render(results: Results, verdicts: Sequence[Verdict], header: str) -> str:
    parts = [header]
    for key, (title, columns) in SECTIONS.items():
        rows = results.rows(key)
        if rows:
            parts.append(f"### {title}\n\n{table(columns, rows)}")
    goal_columns = [
        Column("issue", "issue"),
        Column("goal", "goal"),
        Column("target", "target"),
        Column("measured", "measured"),
        Column("verdict", "verdict"),
    ]
    parts.append(
        f"### {GOALS_TITLE}\n\n" + table(goal_columns, [verdict.row() for verdict in verdicts])
    )
    if results.notes:
        parts.append("Notes:\n" + "\n".join(f"- {note}" for note in results.notes))
    return "\n\n".join(parts) + "\n"


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")

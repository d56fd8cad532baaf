"""Start-up: how long a sync costs before it asks the server anything.

Every sync tool is started on an empty bucket, and the time runs from just before exec
(``time.time()`` in the launcher) to the moment the moto server receives the tool's first
request (``time.time()`` in the server's process, stamped as the request's headers are
read: ``bench.server``). CLOCK_REALTIME is one clock for every process on the machine, so
the two stamps subtract. An empty bucket leaves nothing after the listing, so the whole
process's wall time is start-up, one listing and shutdown; its peak RSS is what a sync
holds with nothing to do.

Each tool is started by ``bench/launch.py`` (``bench.procs.run_measured``), which takes
the start stamp just before exec and keeps the driver's memory out of the tool's peak RSS.
The tools take turns (s3pull, aws, s5cmd, rclone, then again), so that a burst of other
work on the machine lands on all of them rather than on one; the median of the runs is
reported, every sample kept.
"""

from __future__ import annotations

import shutil
import statistics
from typing import Any

from ..context import Context
from ..procs import Measured
from ..tools import Target
from .sync import AWS, RCLONE, S3PULL_SYNC, S5CMD, Outcome, runners_for

__all__ = ["RUNS", "SECTION", "run_startup"]

SECTION = "startup"
BUCKET = "startup"
RUNS = 5
TOOLS = (S3PULL_SYNC, AWS, S5CMD, RCLONE)


def run_startup(ctx: Context) -> None:
    ctx.client("s3").create_bucket(Bucket=BUCKET)
    target = Target(ctx.moto.endpoint, BUCKET)
    runners = runners_for(ctx, target)
    root = ctx.work / BUCKET
    runs: dict[str, list[tuple[Outcome, float | None, str]]] = {name: [] for name in TOOLS}
    for index in range(RUNS):
        for name in TOOLS:
            runner = runners[name]
            if isinstance(runner, str):
                continue
            # A fresh directory and state each time: the first sync of a new server.
            directory, state = root / f"{name.split()[0]}-{index}", root / f"state-{index}"
            ctx.moto.call("record_arrivals", on=True)
            try:
                outcome = runner(directory, state, f"startup-{name.split()[0]}")
                arrivals = ctx.moto.call("arrivals")["arrivals"]
            finally:
                ctx.moto.call("record_arrivals", on=False)
            runs[name].append((outcome, *_first(outcome.measured, arrivals)))
            shutil.rmtree(directory, ignore_errors=True)
            shutil.rmtree(state, ignore_errors=True)
    for name in TOOLS:
        runner = runners[name]
        if isinstance(runner, str):
            ctx.results.add(SECTION, tool=name, server="moto", result=runner)
        else:
            _add_row(ctx, name, runs[name])
    shutil.rmtree(root, ignore_errors=True)


def _first(measured: Measured, arrivals: list[list[Any]]) -> tuple[float | None, str]:
    """Milliseconds from exec to the first request that arrived after it, and what that
    request was ("s3:ListObjectsV2 by aws-cli/1.46.2 ...")."""
    after = [a for a in arrivals if a[0] >= measured.started_at]
    if not after:
        return None, ""
    stamp, operation, agent = min(after)
    return (stamp - measured.started_at) * 1000, f"{operation} by {agent.split(' ')[0]}"


def _add_row(ctx: Context, name: str, runs: list[tuple[Outcome, float | None, str]]) -> None:
    firsts = [ms for _outcome, ms, _what in runs if ms is not None]
    measured = [outcome.measured for outcome, _ms, _what in runs]
    failed = [m.returncode for m in measured if m.returncode != 0]
    requests = [sum((outcome.requests or {}).values()) for outcome, _ms, _what in runs]
    notes = []
    if failed:
        notes.append(f"exit {failed[0]} in {len(failed)} of {len(runs)} runs")
    if len(firsts) < len(runs):
        notes.append(f"no request in {len(runs) - len(firsts)} run(s)")
    result = "; ".join(["ok" if not failed and len(firsts) == len(runs) else "FAILED", *notes])
    ctx.results.add(
        SECTION,
        tool=name,
        server="moto",
        runs=len(runs),
        first_request_ms=statistics.median(firsts) if firsts else None,
        first_request_samples_ms=firsts,
        first_request=runs[0][2] if runs else "",
        wall_s=statistics.median(m.wall_seconds for m in measured),
        wall_samples_s=[m.wall_seconds for m in measured],
        peak_rss_mb=statistics.median(m.peak_rss_mb for m in measured),
        cpu_s=statistics.median(m.cpu_seconds for m in measured),
        requests=statistics.median(requests),
        result=result,
    )

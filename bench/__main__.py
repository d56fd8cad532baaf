"""``python -m bench [--quick]``: every contender, one moto server, one run.

Prints Markdown tables and the goal verdicts, and writes them with every raw number to
``bench/results/bench-<mode>-<time>.{json,md}``. Exits 1 only when a case crashed (a bug
or a broken tool), never because a goal was not met: benchmarks measure.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from s3pull import __version__

from .cases.ceiling import get_ceiling, measure_ceilings
from .cases.fast_server import run_fast_server
from .cases.fleet import run_fleet
from .cases.idle import run_idle
from .cases.large import run_large
from .cases.latency import run_latency
from .cases.publishing import run_publishing
from .cases.startup import run_startup
from .cases.sync import run_sync_cases
from .cases.throughput import run_throughput
from .context import FULL, QUICK, Context, Sizes
from .goals import judge
from .procs import own_peak_rss_mb
from .report import render, write_json
from .server import MotoProcess
from .tools import BENCH, Toolbox, find_tools
from .watch import RenameWatcher

Case = Callable[[Context], None]


def _ceiling_again(ctx: Context) -> None:
    """The GET ceiling once more at the end: a drifting server shows here."""
    result = get_ceiling(ctx, "ceiling", 1000, ctx.get_connections)
    ctx.results.ceilings["get_end"] = result.rate
    ctx.results.add(
        "ceilings",
        what=f"moto: GET 2048 B at the end of the run, {ctx.get_connections} connection(s)",
        rate=result.rate,
        unit="GET/s",
        errors=result.errors,
    )


CASES: dict[str, Case] = {
    "ceilings": measure_ceilings,
    "startup": run_startup,
    "sync": run_sync_cases,
    "latency": run_latency,
    "throughput": run_throughput,
    "large": run_large,
    "idle": run_idle,
    "fleet": run_fleet,
    "publishing": run_publishing,
    "fast-server": run_fast_server,
    "ceiling-end": _ceiling_again,
}


def _first_line(argv: list[str]) -> str:
    try:
        completed = subprocess.run(argv, capture_output=True, text=True, check=False)
        return completed.stdout.rstrip()  # rstrip: `free -h` aligns its header with spaces
    except OSError:
        return "unknown"


def _load_average() -> str:
    # Other work on the machine shows here: the numbers are only as quiet as the machine.
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def machine() -> dict[str, str]:
    model = "unknown"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    free = _first_line(["free", "-h"]).splitlines()
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": _first_line(["nproc"]),
        "cpu": model,
        "memory": " ".join(free[1].split()[:2]) if len(free) > 1 else "unknown",
        "free_h": "\n".join(free),
        "os": _first_line(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_at_start": _load_average(),
    }


def versions(tools: Toolbox) -> dict[str, str]:
    from importlib.metadata import version

    found = {"s3pull": __version__, "moto": version("moto"), "aiobotocore": version("aiobotocore")}
    for tool in (tools.aws, tools.s5cmd, tools.rclone, tools.s3rver):
        found[tool.name] = tool.version if tool.path else tool.skipped
    return found


def header(sizes: Sizes, host: dict[str, str], found: dict[str, str]) -> str:
    lines = [
        f"## s3pull benchmark ({sizes.mode} mode), {host['date']}",
        "",
        f"Machine: {host['nproc']} cores ({host['cpu']}), {host['memory']} memory,"
        f" {host['os']}, kernel {host['kernel']}, Python {host['python']};"
        f" load average at start {host['load_at_start']}, at end {host.get('load_at_end', '?')}.",
        "Versions: " + "; ".join(f"{name} {value}" for name, value in found.items()),
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="CI-sized run (a few minutes)")
    parser.add_argument(
        "--only", default="", help=f"comma-separated cases to run: {', '.join(CASES)}"
    )
    parser.add_argument("--results", type=Path, default=BENCH / "results")
    parser.add_argument("--keep", action="store_true", help="keep the work directory and logs")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    selected = [name.strip() for name in args.only.split(",") if name.strip()] or list(CASES)
    unknown = set(selected) - set(CASES)
    if unknown:
        parser.error(f"unknown case(s): {', '.join(sorted(unknown))}")
    if "ceilings" not in selected and {"sync", "throughput"} & set(selected):
        selected.insert(0, "ceilings")  # the ratios need them

    host = machine()
    tools = find_tools()
    found = versions(tools)
    work = Path(tempfile.mkdtemp(prefix="s3pull-bench-"))
    logs = work / "logs"
    logs.mkdir()
    moto = MotoProcess(str(logs / "moto.log"))
    watcher = RenameWatcher()
    ctx = Context(sizes, moto, tools, work, logs, watcher)
    crashed: list[str] = []
    began = time.monotonic()
    try:
        for name in (n for n in CASES if n in selected):
            print(f"bench: {name} ...", file=sys.stderr, flush=True)
            started = time.monotonic()
            try:
                CASES[name](ctx)
            except Exception as exc:
                crashed.append(name)
                ctx.results.notes.append(f"case {name} CRASHED: {type(exc).__name__}: {exc}")
                traceback.print_exc()
            print(
                f"bench: {name} done in {time.monotonic() - started:.0f} s",
                file=sys.stderr,
                flush=True,
            )
    finally:
        watcher.close()
        moto.stop()
    host["load_at_end"] = _load_average()
    ctx.results.notes.append(f"whole run: {time.monotonic() - began:.0f} s")
    ctx.results.notes.append(
        f"the driver's peak RSS: {own_peak_rss_mb():.0f} MB. The peak RSS of a running agent"
        " (s3pull run rows) never reads below the driver's peak at its start (bench/procs.py):"
        " near it, it is an upper bound"
    )
    verdicts = judge(ctx.results, sizes.mode)
    text = render(ctx.results, verdicts, header(sizes, host, found))
    print(text)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M%S")
    base = args.results / f"bench-{sizes.mode}-{stamp}"
    write_json(
        base.with_suffix(".json"),
        {
            "mode": sizes.mode,
            "sizes": dataclasses.asdict(sizes),
            "machine": host,
            "versions": found,
            "ceilings": ctx.results.ceilings,
            "sections": ctx.results.sections,
            "goals": [verdict.row() for verdict in verdicts],
            "notes": ctx.results.notes,
        },
    )
    base.with_suffix(".md").write_text(text)
    print(f"bench: results in {base}.json and {base}.md", file=sys.stderr)
    if args.keep or crashed:
        print(f"bench: work directory and logs kept in {work}", file=sys.stderr)
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if crashed else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())

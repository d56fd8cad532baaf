"""Full sync of N small objects by every contender, then one change in the same bucket.

The one-change case reuses each contender's directory from its own full sync, so every
tool starts from the state it left. At 50,000 objects (full mode only) a full sync per
tool would take ten minutes, so ``s3pull sync`` fills one directory and the others start
from a copy of it (``cp -a`` keeps the mtimes, which every tool's skip check needs).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from s3pull.emulator import create_pipeline

from ..agent import AgentProcess, MirrorSpec, write_config
from ..changes import put_and_wait, visible_times
from ..context import OBJECT_SIZE, Context, delta
from ..procs import Measured, run_measured
from ..tools import Target
from ..wiring import add_queue
from .ceiling import get_ceiling

__all__ = ["FULL", "Outcome", "Runner", "add_full_row", "run_sync_cases", "runners_for"]

FULL = "full_sync"
CHANGE = "one_change"

S3PULL_SYNC = "s3pull sync"
S3PULL_RUN = "s3pull run"
AWS = "aws s3 sync"
AWS_EXACT = "aws s3 sync --exact-timestamps"
S5CMD = "s5cmd sync"
RCLONE = "rclone sync --fast-list --checksum"


@dataclass(frozen=True, slots=True)
class Outcome:
    measured: Measured
    requests: dict[str, int] | None  # None: not counted (a server other than moto)


# A contender's sync: (directory, state directory, log name) -> Outcome, or a skip reason.
Runner = Callable[[Path, Path, str], Outcome]


def runners_for(ctx: Context, target: Target) -> dict[str, Runner | str]:
    """Every contender that syncs a bucket to a directory, or why it is skipped."""
    tools = ctx.tools
    env = tools.env(target, ctx.work)

    def command(argv: list[str], env: dict[str, str], log: str) -> Outcome:
        # S3 requests only: no tool here calls SQS, but a stopped agent's long poll may.
        before = ctx.moto.agent_requests(None) if target.counted else None
        measured = run_measured(argv, env, ctx.log(log))
        if before is None:
            return Outcome(measured, None)
        return Outcome(measured, delta(ctx.moto.agent_requests(None), before))

    runners: dict[str, Runner | str] = {
        S3PULL_SYNC: lambda d, s, log: command(tools.s3pull_sync(target, d, s), env, log),
    }
    if tools.aws.path:
        runners[AWS] = lambda d, _s, log: command(tools.aws_sync(target, d, False), env, log)
        runners[AWS_EXACT] = lambda d, _s, log: command(tools.aws_sync(target, d, True), env, log)
    else:
        runners[AWS] = runners[AWS_EXACT] = tools.aws.skipped
    if tools.s5cmd.path:
        runners[S5CMD] = lambda d, _s, log: command(tools.s5cmd_sync(target, d), env, log)
    else:
        runners[S5CMD] = tools.s5cmd.skipped
    if tools.rclone.path:

        def rclone(d: Path, _s: Path, log: str) -> Outcome:
            argv, extra = tools.rclone_sync(target, d)
            rclone_env = {**env, **extra}
            rclone_env.pop("AWS_CA_BUNDLE", None)
            return command(argv, rclone_env, log)

        runners[RCLONE] = rclone
    else:
        runners[RCLONE] = tools.rclone.skipped
    return runners


def count_files(directory: Path) -> int:
    return sum(len(files) for _root, _dirs, files in os.walk(directory))


def add_full_row(
    ctx: Context,
    tool: str,
    count: int,
    ceiling: float,
    outcome: Outcome,
    files: int,
    server: str = "moto",
    note: str = "",
) -> None:
    measured, requests = outcome.measured, outcome.requests
    counts: dict[str, int | float | None] = {}
    if requests is not None:
        gets = sum(n for name, n in requests.items() if name.startswith("s3:GetObject"))
        lists = sum(n for name, n in requests.items() if name.startswith("s3:ListObjects"))
        total = sum(requests.values())
        counts = {
            "requests": total,
            "requests_per_object": total / count,
            "gets": gets,
            "lists": lists,
            "other_requests": total - gets - lists,
        }
    rate = count / measured.wall_seconds
    status = "ok" if files == count and measured.returncode == 0 else "INCOMPLETE"
    if measured.returncode != 0:
        status += f" (exit {measured.returncode})"
    if files != count:
        status += f" ({files} of {count} files)"
    ctx.results.add(
        FULL,
        tool=tool,
        server=server,
        objects=count,
        seconds=measured.wall_seconds,
        objects_per_s=rate,
        of_ceiling=rate / ceiling,
        **counts,
        request_detail=requests,
        peak_rss_mb=measured.peak_rss_mb,
        cpu_s=measured.cpu_seconds,
        result=status + (f"; {note}" if note else ""),
    )


def _skip(ctx: Context, section: str, tool: str, count: int, why: str) -> None:
    ctx.results.add(section, tool=tool, server="moto", objects=count, result=why)


def _bootstrap(ctx: Context, target: Target, directory: Path, state: Path, log: str) -> Outcome:
    """``s3pull run`` from start to its first long poll: queue check, listing, downloads."""
    config = write_config(
        state.with_suffix(".toml"),
        target.endpoint,
        target.queue_url,
        state,
        [MirrorSpec(target.bucket, "", directory)],
    )
    queue = target.queue_url.rsplit("/", 1)[-1]
    before = ctx.moto.agent_requests(queue)
    agent = AgentProcess(config, ctx.log(log))
    ready = agent.wait_ready()
    requests = delta(ctx.moto.agent_requests(queue), before)
    stopped = agent.stop()
    measured = Measured(
        stopped.returncode, ready - agent.spawned_at, stopped.cpu_seconds, stopped.peak_rss_mb
    )
    return Outcome(measured, requests)


def run_sync_cases(ctx: Context) -> None:
    for count in sorted(set(ctx.sizes.full_sync) | set(ctx.sizes.one_change)):
        _one_bucket(ctx, count)


def _one_bucket(ctx: Context, count: int) -> None:
    bucket = f"sync-{count}"
    pipeline = create_pipeline(ctx.moto.endpoint, bucket)
    # Created inside moto without notifications: the queue starts empty.
    ctx.moto.fill(bucket, "", count, OBJECT_SIZE)
    target = Target(ctx.moto.endpoint, bucket, pipeline.queue_url)
    root = ctx.work / bucket
    measured = get_ceiling(ctx, bucket, min(count, 1000), ctx.get_connections)
    ceiling = measured.rate
    ctx.results.ceilings[f"get_{count}"] = ceiling
    ctx.results.add(
        "ceilings",
        what=f"moto: GET {OBJECT_SIZE} B, {count}-object bucket, {ctx.get_connections} conn.",
        rate=ceiling,
        unit="GET/s",
        errors=measured.errors,
    )
    runners = runners_for(ctx, target)
    dirs = {name: root / f"d{index}" for index, name in enumerate([S3PULL_RUN, *runners])}
    states = {name: root / f"s{index}" for index, name in enumerate([S3PULL_RUN, *runners])}

    if count in ctx.sizes.full_sync:
        for name in (S3PULL_SYNC, S3PULL_RUN, AWS, S5CMD, RCLONE):
            runner = runners.get(name)
            if name == S3PULL_RUN:
                outcome = _bootstrap(ctx, target, dirs[name], states[name], f"{bucket}-run")
            elif isinstance(runner, str):
                _skip(ctx, FULL, name, count, runner)
                continue
            else:
                assert runner is not None
                outcome = runner(dirs[name], states[name], f"{bucket}-{name.split()[0]}")
            add_full_row(ctx, name, count, ceiling, outcome, count_files(dirs[name]))
        if not isinstance(runners[AWS], str):
            _copy(dirs[AWS], dirs[AWS_EXACT])
    else:
        # Seed every directory from one s3pull sync (see the module docstring).
        runner = runners[S3PULL_SYNC]
        assert not isinstance(runner, str)
        outcome = runner(dirs[S3PULL_SYNC], states[S3PULL_SYNC], f"{bucket}-seed")
        files = count_files(dirs[S3PULL_SYNC])
        add_full_row(
            ctx, S3PULL_SYNC, count, ceiling, outcome, files, note="seed for the one-change case"
        )
        for name in (S3PULL_RUN, AWS, AWS_EXACT, S5CMD, RCLONE):
            _copy(dirs[S3PULL_SYNC], dirs[name])
        _copy(states[S3PULL_SYNC], states[S3PULL_RUN])

    if count in ctx.sizes.one_change:
        _one_change(ctx, target, pipeline.topic_arn, runners, dirs, states, count)
    shutil.rmtree(root, ignore_errors=True)


def _copy(source: Path, destination: Path) -> None:
    shutil.rmtree(destination, ignore_errors=True)
    subprocess.run(["cp", "-a", str(source), str(destination)], check=True)


def _one_change(
    ctx: Context,
    target: Target,
    topic_arn: str,
    runners: dict[str, Runner | str],
    dirs: dict[str, Path],
    states: dict[str, Path],
    count: int,
) -> None:
    """One same-size overwrite; each tool re-syncs; then s3pull applies its own changes
    from their notifications."""
    s3 = ctx.client("s3")
    key = f"{count // 2:06d}"
    body = os.urandom(OBJECT_SIZE)  # same size: size-and-mtime tools may miss it
    s3.put_object(Bucket=target.bucket, Key=key, Body=body)
    for name in (S3PULL_SYNC, AWS, AWS_EXACT, S5CMD, RCLONE):
        runner = runners[name]
        if isinstance(runner, str):
            _skip(ctx, CHANGE, name, count, runner)
            continue
        outcome = runner(dirs[name], states[name], f"{target.bucket}-change-{name.split()[0]}")
        path = dirs[name] / key
        applied = path.exists() and path.read_bytes() == body
        requests = outcome.requests or {}
        ctx.results.add(
            CHANGE,
            tool=name,
            server="moto",
            objects=count,
            ms=outcome.measured.wall_seconds * 1000,
            requests=sum(requests.values()),
            request_detail=requests,
            peak_rss_mb=outcome.measured.peak_rss_mb,
            result="applied" if applied else "MISSED the change",
        )
    _s3pull_changes(ctx, target, topic_arn, dirs[S3PULL_RUN], states[S3PULL_RUN], count)


def _s3pull_changes(
    ctx: Context, target: Target, topic_arn: str, directory: Path, state: Path, count: int
) -> None:
    # A queue of its own (see bench.wiring), made now: the tools' change above is not in
    # it, and the bootstrap applies that one from the listing.
    queue = f"{target.bucket}-change"
    queue_url = add_queue(ctx.client("sqs"), ctx.client("sns"), topic_arn, queue)
    config = write_config(
        state.with_suffix(".toml"),
        target.endpoint,
        queue_url,
        state,
        [MirrorSpec(target.bucket, "", directory)],
    )
    ctx.watcher.watch(directory)
    agent = AgentProcess(config, ctx.log(f"{target.bucket}-change-run"))
    try:
        agent.wait_ready()
        ctx.moto.call("record_visible", on=True)
        changes = [
            put_and_wait(
                ctx, target.bucket, f"{count // 2 + 1 + i:06d}", directory, OBJECT_SIZE, queue
            )
            for i in range(ctx.sizes.change_samples)
        ]
        visible = visible_times(ctx, queue)
    finally:
        measured = agent.stop()
        ctx.moto.call("record_visible", on=False)
    for change in changes:
        change.visible = visible.get(change.key)
    from_visible = [c.visible_to_renamed_ms for c in changes if c.visible_to_renamed_ms is not None]
    from_put = [c.put_to_renamed_ms for c in changes if c.put_to_renamed_ms is not None]
    per_change = [sum(c.requests.values()) for c in changes if c.requests is not None]
    missed = sum(c.renamed is None for c in changes)
    ctx.results.add(
        CHANGE,
        tool="s3pull run (event)",
        server="moto",
        objects=count,
        ms=statistics.median(from_visible) if from_visible else None,
        ms_from_put=statistics.median(from_put) if from_put else None,
        samples_ms=from_visible,
        requests=statistics.median(per_change) if per_change else None,
        request_detail=changes[0].requests if changes else None,
        peak_rss_mb=measured.peak_rss_mb,
        result="applied" if not missed else f"MISSED {missed} of {len(changes)}",
    )

"""One large object: throughput and peak RSS of s3pull against ``aws s3 cp`` (and s5cmd).

awscli and s5cmd fetch large objects as parallel ranged GETs; s3pull streams one GET
into its temporary file. moto answers every ranged GET by reading the whole object into
memory first, so on moto ranged readers pay for the object once per range; the server's
own peak RSS is recorded per tool to show it.
"""

from __future__ import annotations

from pathlib import Path

from s3pull.emulator import create_pipeline

from ..context import Context, delta
from ..procs import Measured, run_measured
from ..tools import Target

__all__ = ["KEY", "measure_large", "run_large"]

BUCKET = "large"
KEY = "big/000000"
MIB = 1 << 20


def run_large(ctx: Context) -> None:
    size = ctx.sizes.large_bytes
    pipeline = create_pipeline(ctx.moto.endpoint, BUCKET)
    ctx.moto.fill(BUCKET, "big/", 1, size)
    measure_large(ctx, Target(ctx.moto.endpoint, BUCKET, pipeline.queue_url), size)


def measure_large(ctx: Context, target: Target, size: int) -> None:
    """Every contender fetches ``KEY`` (``size`` bytes) from ``target`` once."""
    root = ctx.work / f"{target.bucket}-{target.server}"
    tools = ctx.tools
    env = tools.env(target, ctx.work)
    commands: dict[str, tuple[list[str], Path] | str] = {
        "s3pull sync": (
            tools.s3pull_sync(target, root / "s3pull", root / "state", prefix="big/"),
            root / "s3pull" / "000000",
        ),
        "aws s3 cp": (tools.aws_cp(target, KEY, root / "aws"), root / "aws")
        if tools.aws.path
        else tools.aws.skipped,
        "s5cmd cp": (tools.s5cmd_cp(target, KEY, root / "s5cmd"), root / "s5cmd")
        if tools.s5cmd.path
        else tools.s5cmd.skipped,
    }
    for name, command in commands.items():
        if isinstance(command, str):
            ctx.results.add(
                "large", tool=name, server=target.server, mib=size // MIB, result=command
            )
            continue
        argv, output = command
        log = ctx.log(f"large-{target.server}-{name.split()[0]}")
        if target.counted:
            ctx.moto.call("reset_peak_rss")
            before = ctx.moto.agent_requests(None)
        measured: Measured = run_measured(argv, env, log)
        requests: dict[str, int] | None = None
        server_peak: float | None = None
        if target.counted:
            requests = delta(ctx.moto.agent_requests(None), before)
            server_peak = ctx.moto.call("stats")["peak_rss_mb"]
        landed = output.exists() and output.stat().st_size == size
        ctx.results.add(
            "large",
            tool=name,
            server=target.server,
            mib=size // MIB,
            seconds=measured.wall_seconds,
            mib_per_s=size / MIB / measured.wall_seconds,
            peak_rss_mb=measured.peak_rss_mb,
            cpu_s=measured.cpu_seconds,
            requests=None if requests is None else sum(requests.values()),
            request_detail=requests,
            server_peak_rss_mb=server_peak,
            result="ok" if landed and measured.returncode == 0 else "FAILED",
        )
        output.unlink(missing_ok=True)

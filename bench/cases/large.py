"""One large object: throughput and peak RSS of s3pull against ``aws s3 cp`` (and s5cmd).

awscli, s5cmd and s3pull (from 256 MiB, ``s3pull.ranged``) fetch large objects as
parallel ranged GETs. moto answers every ranged GET by reading the whole object into
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
    uncapped: float | None = None
    for name, command in commands.items():
        if isinstance(command, str):
            ctx.results.add(
                "large", tool=name, server=target.server, mib=size // MIB, result=command
            )
            continue
        argv, output = command
        speed = _measure(ctx, target, size, name, argv, output)
        if name == "s3pull sync":
            uncapped = speed
    if uncapped:
        # The same sync capped at half the speed it just had: the row shows the cap
        # holding (about half the MiB/s, plus the bucket's one-second burst) and what it
        # costs in CPU and memory.
        cap = f"{max(1, int(uncapped / 2))}MiB/s"
        argv = tools.s3pull_sync(
            target, root / "capped", root / "capped-state", prefix="big/", max_bandwidth=cap
        )
        _measure(
            ctx, target, size, f"s3pull sync, max_bandwidth {cap}", argv, root / "capped" / "000000"
        )


def _measure(
    ctx: Context, target: Target, size: int, name: str, argv: list[str], output: Path
) -> float | None:
    """Run one contender, record its row; its MiB/s when the object landed."""
    log = ctx.log(f"large-{target.server}-{name.split()[0]}")
    if target.counted:
        ctx.moto.call("reset_peak_rss")
        before = ctx.moto.agent_requests(None)
    measured: Measured = run_measured(argv, ctx.tools.env(target, ctx.work), log)
    requests: dict[str, int] | None = None
    server_peak: float | None = None
    if target.counted:
        requests = delta(ctx.moto.agent_requests(None), before)
        server_peak = ctx.moto.call("stats")["peak_rss_mb"]
    landed = output.exists() and output.stat().st_size == size
    ok = landed and measured.returncode == 0
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
        result="ok" if ok else "FAILED",
    )
    output.unlink(missing_ok=True)
    return size / MIB / measured.wall_seconds if ok else None

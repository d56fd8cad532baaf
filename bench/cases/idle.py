"""Idle cost: an agent with nothing to do, with the default 20 s long poll, watched for a
while: SQS requests per minute (counted at the server), CPU seconds and RSS (from /proc).
"""

from __future__ import annotations

import time

from s3pull.emulator import create_pipeline

from ..agent import AgentProcess, MirrorSpec, write_config
from ..context import Context, delta

__all__ = ["run_idle"]

BUCKET = "idle"
SETTLE = 3.0  # let start-up allocations and the first poll happen before the window


def run_idle(ctx: Context) -> None:
    pipeline = create_pipeline(ctx.moto.endpoint, BUCKET)
    state = ctx.work / BUCKET / "state"
    config = write_config(
        state.with_suffix(".toml"),
        ctx.moto.endpoint,
        pipeline.queue_url,
        state,
        [MirrorSpec(BUCKET, "", ctx.work / BUCKET / "mirror")],
    )
    agent = AgentProcess(config, ctx.log("idle-run"))
    try:
        agent.wait_ready()
        time.sleep(SETTLE)
        before = ctx.moto.agent_requests(BUCKET)
        first = agent.sample()
        started = time.monotonic()
        rss = [first.rss_mb]
        while (elapsed := time.monotonic() - started) < ctx.sizes.idle_seconds:
            time.sleep(min(1.0, ctx.sizes.idle_seconds - elapsed))
            rss.append(agent.sample().rss_mb)
        last = agent.sample()
        requests = delta(ctx.moto.agent_requests(BUCKET), before)
    finally:
        measured = agent.stop()
    minutes = ctx.sizes.idle_seconds / 60
    sqs = sum(count for name, count in requests.items() if name.startswith("sqs:"))
    ctx.results.add(
        "idle",
        seconds=ctx.sizes.idle_seconds,
        sqs_requests=sqs,
        requests_per_min=sum(requests.values()) / minutes,
        request_detail=requests,
        cpu_s=last.cpu_seconds - first.cpu_seconds,
        cpu_s_per_min=(last.cpu_seconds - first.cpu_seconds) / minutes,
        rss_mb=last.rss_mb,
        max_rss_mb=max(rss),
        peak_rss_mb=measured.peak_rss_mb,
        exit_code=measured.returncode,
    )

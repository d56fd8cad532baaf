"""A fleet on one machine: N agents, each with its own queue subscribed to one SNS topic
(the production shape), and the time until every one of them has applied a change."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from s3pull.emulator import create_pipeline

from ..agent import AgentProcess, MirrorSpec, write_config
from ..changes import percentile, visible_times
from ..context import OBJECT_SIZE, Context
from ..wiring import add_queue

__all__ = ["run_fleet"]

BUCKET = "fleet"


def run_fleet(ctx: Context) -> None:
    size = ctx.sizes.fleet_agents
    pipeline = create_pipeline(ctx.moto.endpoint, BUCKET)
    sqs, sns = ctx.client("sqs"), ctx.client("sns")
    queues = [(BUCKET, pipeline.queue_url)] + [
        (f"{BUCKET}-{i}", add_queue(sqs, sns, pipeline.topic_arn, f"{BUCKET}-{i}"))
        for i in range(1, size)
    ]
    directories: list[Path] = []
    agents: list[AgentProcess] = []
    try:
        for index, (_name, url) in enumerate(queues):
            root = ctx.work / BUCKET / f"agent{index:02d}"
            directories.append(root / "mirror")
            ctx.watcher.watch(root / "mirror")
            config = write_config(
                root / "s3pull.toml",
                ctx.moto.endpoint,
                url,
                root / "state",
                [MirrorSpec(BUCKET, "", root / "mirror")],
            )
            agents.append(AgentProcess(config, ctx.log(f"fleet-{index:02d}")))
        started = time.monotonic()
        for agent in agents:
            agent.wait_ready(timeout=600)
        start_seconds = time.monotonic() - started
        time.sleep(1.0)  # every agent in its first long poll
        rss_total = sum(agent.sample().rss_mb for agent in agents)
        ctx.moto.call("record_visible", on=True)
        s3 = ctx.client("s3")
        rounds: list[tuple[str, float, list[float | None]]] = []
        for change in range(ctx.sizes.fleet_changes):
            key = f"f{change:03d}"
            put = time.time()
            s3.put_object(Bucket=BUCKET, Key=key, Body=b"x" * OBJECT_SIZE)
            landed = [ctx.watcher.renamed_at(d, key, put, 60) for d in directories]
            rounds.append((key, put, landed))
            time.sleep(0.5)
        visible = {name: visible_times(ctx, name) for name, _url in queues}
    finally:
        ctx.moto.call("record_visible", on=False)
        for agent in agents:
            agent.terminate()
        for agent in agents:
            agent.stop()
    to_all: list[float] = []
    first: list[float] = []
    from_visible: list[float] = []
    missed = 0
    for key, put, landed in rounds:
        done = [t for t in landed if t is not None]
        missed += len(landed) - len(done)
        if len(done) == len(landed):
            to_all.append((max(done) - put) * 1000)
        if done:
            first.append((min(done) - put) * 1000)
        for (name, _url), stamp in zip(queues, landed, strict=True):
            seen = visible[name].get(key)
            if stamp is not None and seen is not None:
                from_visible.append((stamp - seen) * 1000)
    ctx.results.add(
        "fleet",
        agents=size,
        changes=len(rounds),
        start_seconds=start_seconds,
        first_ms=statistics.median(first) if first else None,
        all_ms_p50=statistics.median(to_all) if to_all else None,
        all_ms_max=max(to_all, default=None),
        from_visible_p50_ms=percentile(from_visible, 0.5),
        from_visible_max_ms=max(from_visible, default=None),
        idle_rss_total_mb=rss_total,
        missed=missed,
    )

"""A fleet on one machine: N agents, each with its own provisioned queue subscribed to one
SNS topic (the production shape), the time until every one of them has applied a change,
and how long `s3pull fleet wait --key` takes to say so."""

from __future__ import annotations

import statistics
import subprocess
import time
from pathlib import Path

from s3pull.emulator import create_pipeline

from ..agent import S3PULL, AgentProcess, MirrorSpec, agent_env, write_config
from ..changes import percentile, visible_times
from ..context import OBJECT_SIZE, Context

__all__ = ["run_fleet"]

BUCKET = "fleet"


def run_fleet(ctx: Context) -> None:
    size = ctx.sizes.fleet_agents
    pipeline = create_pipeline(ctx.moto.endpoint, BUCKET)
    # Live instances, so that `fleet wait` counts them (a queue whose instance EC2 does
    # not know is "gone" and not waited for).
    ec2 = ctx.client("ec2")
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    launched = ec2.run_instances(ImageId=image, MinCount=size, MaxCount=size)["Instances"]
    instances = sorted(i["InstanceId"] for i in launched)
    queues = [f"{BUCKET}-{instance}" for instance in instances]
    directories: list[Path] = []
    agents: list[AgentProcess] = []
    configs: list[Path] = []
    try:
        for index, instance in enumerate(instances):
            root = ctx.work / BUCKET / f"agent{index:02d}"
            directories.append(root / "mirror")
            ctx.watcher.watch(root / "mirror")
            config = write_config(
                root / "s3pull.toml",
                ctx.moto.endpoint,
                f"{BUCKET}-{{instance_id}}",
                root / "state",
                [MirrorSpec(BUCKET, "", root / "mirror")],
                own_queue=(pipeline.topic_arn, instance),
            )
            configs.append(config)
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
        visible = {name: visible_times(ctx, name) for name in queues}
        wait_s, wait_exit, wait_all = _fleet_wait(ctx, configs[0], directories)
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
        for name, stamp in zip(queues, landed, strict=True):
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
        fleet_wait_s=wait_s,
        fleet_wait_exit=wait_exit,
        fleet_wait_all_had_it=wait_all,
    )


def _fleet_wait(ctx: Context, config: Path, directories: list[Path]) -> tuple[float, int, bool]:
    """One more upload, then `s3pull fleet wait --key` as a deploy pipeline runs it: the
    seconds from the PUT to its exit (its own start-up and the 5 s delivery allowance
    included), its exit status, and whether every agent had the file by then."""
    key = "fleet-wait"
    put = time.monotonic()
    ctx.client("s3").put_object(Bucket=BUCKET, Key=key, Body=b"w" * OBJECT_SIZE)
    command = [S3PULL, "fleet", "wait", "--key", f"s3://{BUCKET}/{key}", "--timeout", "300"]
    waited = subprocess.run(
        [*command, "--config", str(config)],
        env=agent_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.monotonic() - put
    every = all((directory / key).exists() for directory in directories)
    return seconds, waited.returncode, every

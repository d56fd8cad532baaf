"""Sustained throughput through the whole notification path, against the pipeline ceiling
measured on the same server in the same run (``cases.ceiling``).

A cheap uploader PUTs N new objects as fast as moto takes them while ``s3pull run``
applies them; the rate runs from the first PUT to the N-th file renamed.
"""

from __future__ import annotations

from ..context import OBJECT_SIZE, Context, delta
from ..load import run_load
from .ceiling import UPLOAD_CONNECTIONS, pipeline_ceiling
from .mirrored import start_mirroring_agent

__all__ = ["run_throughput"]

BUCKET = "throughput"


def run_throughput(ctx: Context) -> None:
    count = ctx.sizes.throughput_changes
    # The ceiling again, right before the agent's turn: other work on the machine moves
    # both, and the ratio is only fair between neighbours.
    consumers = ctx.results.ceilings["pipeline_consumers"]
    ceiling = pipeline_ceiling(
        ctx, ctx.results.ceilings["pipeline_queue_url"], "again/", consumers
    ).rate
    ctx.results.ceilings["pipeline_before_throughput"] = ceiling
    ctx.results.add(
        "ceilings",
        what=f"moto: notification path, just before the throughput case, {consumers} consumer(s)",
        rate=ceiling,
        unit="changes/s",
        errors=0,
    )
    _pipeline, directory, agent = start_mirroring_agent(ctx, BUCKET)
    try:
        agent.wait_ready()
        before = ctx.moto.agent_requests(BUCKET)
        cpu_before = agent.sample().cpu_seconds
        upload = run_load(
            "put",
            f"--endpoint={ctx.moto.endpoint}",
            f"--bucket={BUCKET}",
            "--prefix=t",
            f"--count={count}",
            f"--size={OBJECT_SIZE}",
            f"--connections={UPLOAD_CONNECTIONS}",
        )
        last = ctx.watcher.nth_rename(directory, count, timeout=900)
        cpu = agent.sample().cpu_seconds - cpu_before
        requests = delta(ctx.moto.agent_requests(BUCKET), before)
    finally:
        measured = agent.stop()
    landed = ctx.watcher.renames(directory)
    seconds = (last or upload.finished) - upload.started
    rate = landed / seconds
    requests.pop("s3:PutObject", None)  # the uploader's
    ctx.results.add(
        "throughput",
        changes=count,
        landed=landed,
        seconds=seconds,
        upload_seconds=upload.finished - upload.started,
        # How far behind the uploader the agent finished: near zero means it kept up,
        # and the uploads (moto's PUT with its notification) set the pace.
        lag_after_last_put_s=(last or upload.finished) - upload.finished,
        changes_per_s=rate,
        ceiling_per_s=ceiling,
        of_ceiling=rate / ceiling,
        agent_cpu_s=cpu,
        agent_cpu_ms_per_change=cpu * 1000 / max(landed, 1),
        agent_peak_rss_mb=measured.peak_rss_mb,
        requests_per_change=sum(requests.values()) / max(landed, 1),
        request_detail=requests,
    )

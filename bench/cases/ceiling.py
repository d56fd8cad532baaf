"""The server's own limits, measured in the same run as the tools they bound.

- GET ceiling: small GETs per second from a client that costs almost nothing
  (``bench.load``), at the concurrency where moto answers fastest.
- Pipeline ceiling: changes per second through PUT -> S3 notification -> SNS -> SQS ->
  ReceiveMessage -> GET -> DeleteMessageBatch, with the same cheap client on both ends.
  That is the most any agent could get out of this server.
"""

from __future__ import annotations

from s3pull.emulator import create_pipeline

from ..context import OBJECT_SIZE, Context
from ..load import LoadResult, run_load

__all__ = ["get_ceiling", "measure_ceilings", "pipeline_ceiling"]

BUCKET = "ceiling"
KEYS = 1000
SWEEP = (1, 4, 16)


def get_ceiling(
    ctx: Context, bucket: str, keys: int, connections: int, prefix: str = ""
) -> LoadResult:
    return run_load(
        "get",
        f"--endpoint={ctx.moto.endpoint}",
        f"--bucket={bucket}",
        f"--prefix={prefix}",
        f"--count={keys}",
        f"--connections={connections}",
        f"--seconds={ctx.sizes.ceiling_seconds}",
    )


# The throughput case uploads over this many connections; its ceiling uses the same.
UPLOAD_CONNECTIONS = 2


def pipeline_ceiling(ctx: Context, queue_url: str, prefix: str, consumers: int) -> LoadResult:
    """The same uploads as the throughput case, consumed by ``consumers`` cheap threads."""
    return run_load(
        "pipeline",
        f"--endpoint={ctx.moto.endpoint}",
        f"--bucket={BUCKET}",
        f"--prefix={prefix}",
        f"--count={ctx.sizes.throughput_changes}",
        f"--size={OBJECT_SIZE}",
        f"--connections={UPLOAD_CONNECTIONS}",
        f"--consumers={consumers}",
        f"--queue-url={queue_url}",
        "--seconds=600",
    )


def measure_ceilings(ctx: Context) -> None:
    pipeline = create_pipeline(ctx.moto.endpoint, BUCKET)
    ctx.results.ceilings["pipeline_queue_url"] = pipeline.queue_url
    ctx.moto.fill(BUCKET, "", KEYS, OBJECT_SIZE)
    best: LoadResult | None = None
    for connections in SWEEP:
        result = get_ceiling(ctx, BUCKET, KEYS, connections)
        ctx.results.add(
            "ceilings",
            what=f"moto: GET {OBJECT_SIZE} B, {KEYS}-object bucket, {connections} conn.",
            rate=result.rate,
            unit="GET/s",
            errors=result.errors,
        )
        if best is None or result.rate > best.rate:
            best, ctx.get_connections = result, connections
    assert best is not None
    ctx.results.ceilings["get"] = best.rate
    ctx.results.ceilings["get_connections"] = ctx.get_connections

    best_pipeline: LoadResult | None = None
    for consumers in (1, 4):
        result = pipeline_ceiling(ctx, pipeline.queue_url, f"p{consumers}/", consumers)
        ctx.results.add(
            "ceilings",
            what=f"moto: notification path (PUT, SNS, SQS, GET, delete), {consumers} consumer(s)",
            rate=result.rate,
            unit="changes/s",
            errors=result.errors,
        )
        if best_pipeline is None or result.rate > best_pipeline.rate:
            best_pipeline = result
            ctx.results.ceilings["pipeline_consumers"] = consumers
    assert best_pipeline is not None
    ctx.results.ceilings["pipeline"] = best_pipeline.rate

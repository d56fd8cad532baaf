"""The set-up the notification-path cases share: a fresh pipeline and ``s3pull run``
mirroring its whole bucket into a watched directory."""

from __future__ import annotations

from pathlib import Path

from s3pull.emulator import Pipeline, create_pipeline

from ..agent import AgentProcess, MirrorSpec, write_config
from ..context import Context

__all__ = ["start_mirroring_agent"]


def start_mirroring_agent(ctx: Context, bucket: str) -> tuple[Pipeline, Path, AgentProcess]:
    """Pipeline ``bucket`` -> agent -> ``<work>/<bucket>/mirror`` (renames watched); the
    agent is started, not yet ready. Its log is ``<bucket>-run``."""
    pipeline = create_pipeline(ctx.moto.endpoint, bucket)
    directory = ctx.work / bucket / "mirror"
    state = ctx.work / bucket / "state"
    config = write_config(
        state.with_suffix(".toml"),
        ctx.moto.endpoint,
        pipeline.queue_url,
        state,
        [MirrorSpec(bucket, "", directory)],
    )
    ctx.watcher.watch(directory)
    return pipeline, directory, AgentProcess(config, ctx.log(f"{bucket}-run"))

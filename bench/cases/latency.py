"""Latency: N changes one after another, each from PUT (and from its message becoming
visible in SQS) to the file renamed into place.

The changes are paced (a short pause after each one lands) so that each finds the agent
in its long poll, as a change arriving at a random moment would.
"""

from __future__ import annotations

import time

from ..changes import percentile, put_and_wait, visible_times
from ..context import OBJECT_SIZE, Context
from .mirrored import start_mirroring_agent

__all__ = ["run_latency"]

BUCKET = "latency"
PAUSE = 0.02


def run_latency(ctx: Context) -> None:
    _pipeline, directory, agent = start_mirroring_agent(ctx, BUCKET)
    try:
        agent.wait_ready()
        ctx.moto.call("record_visible", on=True)
        changes = []
        for index in range(ctx.sizes.latency_changes):
            changes.append(put_and_wait(ctx, BUCKET, f"l{index:05d}", directory, OBJECT_SIZE))
            time.sleep(PAUSE)
        visible = visible_times(ctx, BUCKET)
    finally:
        measured = agent.stop()
        ctx.moto.call("record_visible", on=False)
    for change in changes:
        change.visible = visible.get(change.key)
    missed = sum(change.renamed is None for change in changes)
    series = {
        "message visible -> file renamed": [c.visible_to_renamed_ms for c in changes],
        "PUT sent -> file renamed": [c.put_to_renamed_ms for c in changes],
    }
    for what, values in series.items():
        landed = [value for value in values if value is not None]
        ctx.results.add(
            "latency",
            what=what,
            changes=len(changes),
            p50_ms=percentile(landed, 0.50),
            p90_ms=percentile(landed, 0.90),
            p99_ms=percentile(landed, 0.99),
            max_ms=max(landed, default=float("nan")),
            missed=missed,
            agent_peak_rss_mb=measured.peak_rss_mb,
        )

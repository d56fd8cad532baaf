"""One change through the notification path, timed from the PUT and from the moment its
message became visible, to the moment the agent renamed the file into place."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .context import Context, delta

__all__ = ["Change", "percentile", "put_and_wait", "visible_times"]

RENAME_TIMEOUT = 60.0


@dataclass(slots=True)
class Change:
    key: str
    put_started: float
    put_done: float
    renamed: float | None
    visible: float | None = None
    requests: dict[str, int] | None = None

    @property
    def put_to_renamed_ms(self) -> float | None:
        return None if self.renamed is None else (self.renamed - self.put_started) * 1000

    @property
    def visible_to_renamed_ms(self) -> float | None:
        if self.renamed is None or self.visible is None:
            return None
        return (self.renamed - self.visible) * 1000


def put_and_wait(
    ctx: Context,
    bucket: str,
    key: str,
    directory: Path,
    size: int,
    count_on_queue: str | None = None,
) -> Change:
    """PUT new random bytes at ``key``; wait until the file is renamed into ``directory``.

    With ``count_on_queue`` (the agent's queue), also wait for the agent's
    DeleteMessageBatch and return what the change cost at the server, the driver's own PUT
    left out. SQS calls are counted when they start, so the long poll that returned the
    message is not in the count and the next one, which started during the change, is.
    """
    s3 = ctx.client("s3")
    queue = count_on_queue
    before = ctx.moto.agent_requests(queue) if queue is not None else None
    body = os.urandom(size)
    started = time.time()
    s3.put_object(Bucket=bucket, Key=key, Body=body)
    done = time.time()
    renamed = ctx.watcher.renamed_at(directory, key, started, RENAME_TIMEOUT)
    change = Change(key, started, done, renamed)
    if before is not None and renamed is not None:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            after = ctx.moto.agent_requests(queue)
            if after["sqs:DeleteMessageBatch"] > before["sqs:DeleteMessageBatch"]:
                break
            time.sleep(0.01)
        requests = delta(after, before)
        requests.pop("s3:PutObject", None)
        change.requests = requests
    return change


def visible_times(ctx: Context, queue_name: str) -> dict[str, float]:
    """When each key's notification was enqueued in ``queue_name`` (the first time)."""
    times: dict[str, float] = {}
    for stamp, queue, keys in ctx.moto.call("visible")["visible"]:
        if queue == queue_name:
            for key in keys:
                times.setdefault(key, stamp)
    return times


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile: the smallest value with ``fraction`` of them at or below."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]

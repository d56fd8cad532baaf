"""Full reconcile of every mirror: the bootstrap of ``run`` and the whole of ``sync``."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from s3pull.mirror import Mirror, ReconcilePlan

__all__ = ["Progress", "ReconcileReport", "plan_all", "reconcile_all"]

log = logging.getLogger(__name__)


class Progress:
    """Receives ``start(files, bytes)`` once, then ``advance(bytes)`` per object."""

    def start(self, files: int, total_bytes: int) -> None:
        pass

    def advance(self, size: int) -> None:
        pass

    def finish(self) -> None:
        pass


@dataclass(frozen=True, slots=True)
class ReconcileReport:
    downloaded: int
    deleted: int
    up_to_date: int
    refused: int
    failed: int
    seconds: float


async def plan_all(mirrors: Sequence[Mirror]) -> list[tuple[Mirror, ReconcilePlan]]:
    plans = []
    for mirror in mirrors:
        plans.append((mirror, await mirror.plan()))
    return plans


async def reconcile_all(
    mirrors: Sequence[Mirror],
    concurrency: int,
    progress: Progress | None = None,
    plans: list[tuple[Mirror, ReconcilePlan]] | None = None,
) -> ReconcileReport:
    """List every mirror's prefix, then download what differs and delete what is extra."""
    started = time.monotonic()
    progress = progress or Progress()
    if plans is None:
        plans = await plan_all(mirrors)
    progress.start(
        sum(len(plan.downloads) for _m, plan in plans),
        sum(plan.download_bytes for _m, plan in plans),
    )
    advance: Callable[[int], None] = progress.advance
    failed = refused_on_write = 0
    for mirror, plan in plans:
        executed = await mirror.execute(plan, concurrency, advance)
        failed += len(executed.failures)
        refused_on_write += executed.refused
    progress.finish()
    report = ReconcileReport(
        downloaded=sum(len(plan.downloads) for _m, plan in plans) - failed - refused_on_write,
        deleted=sum(len(plan.deletions) for _m, plan in plans),
        up_to_date=sum(plan.up_to_date for _m, plan in plans),
        refused=sum(len(plan.refused) for _m, plan in plans) + refused_on_write,
        failed=failed,
        seconds=time.monotonic() - started,
    )
    log.info(
        "reconciled %d mirror(s) in %.1f s: %d downloaded, %d deleted, %d up to date,"
        " %d refused, %d failed",
        len(plans),
        report.seconds,
        report.downloaded,
        report.deleted,
        report.up_to_date,
        report.refused,
        report.failed,
    )
    return report

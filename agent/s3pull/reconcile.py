"""Full reconcile of every mirror: the bootstrap of ``run`` and the whole of ``sync``."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from s3pull.aws import TRANSIENT_ERRORS
from s3pull.backoff import Backoff
from s3pull.logfields import SUMMARY
from s3pull.mirror import Mirror
from s3pull.plan import ReconcilePlan, execute, plan

if TYPE_CHECKING:  # only the daemon's bootstrap needs them; `sync` stays light
    from s3pull.metrics import Recorder
    from s3pull.stopping import StopSignal

__all__ = [
    "BOOTSTRAP_PASSES",
    "Progress",
    "ReconcileReport",
    "bootstrap",
    "plan_all",
    "reconcile_all",
]

log = logging.getLogger(__name__)

BOOTSTRAP_PASSES: Final = 3


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
    held_back: int = 0  # deletions the mass-deletion guard kept back


async def plan_all(
    mirrors: Sequence[Mirror], allow_mass_delete: bool = False
) -> list[tuple[Mirror, ReconcilePlan]]:
    plans = []
    for mirror in mirrors:
        plans.append((mirror, await plan(mirror, allow_mass_delete=allow_mass_delete)))
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
        sum(len(planned.downloads) for _m, planned in plans),
        sum(planned.download_bytes for _m, planned in plans),
    )
    advance: Callable[[int], None] = progress.advance
    failed = refused_on_act = downloaded = deleted = held_back = 0
    try:
        for mirror, planned in plans:
            executed = await execute(mirror, planned, concurrency, advance)
            failed += len(executed.failures)
            refused_on_act += executed.refused
            downloaded += executed.downloaded
            deleted += executed.deleted
            held_back += executed.held_back
    finally:  # interrupted too: end the bar's line, or the next output is glued to it
        progress.finish()
    report = ReconcileReport(
        downloaded=downloaded,
        deleted=deleted,
        up_to_date=sum(planned.up_to_date for _m, planned in plans),
        refused=sum(len(planned.refused) for _m, planned in plans) + refused_on_act,
        failed=failed,
        seconds=time.monotonic() - started,
        held_back=held_back,
    )
    log.info(
        "reconciled %d mirror(s) in %.1f s: %d downloaded, %d deleted, %d up to date,"
        " %d refused, %d failed, %d deletion(s) held back",
        len(plans),
        report.seconds,
        report.downloaded,
        report.deleted,
        report.up_to_date,
        report.refused,
        report.failed,
        report.held_back,
        extra=SUMMARY,
    )
    return report


async def bootstrap(
    mirrors: Sequence[Mirror], concurrency: int, stop: StopSignal, recorder: Recorder
) -> list[Mirror] | None:
    """Reconcile every mirror; give a failing one a few tries, then go on without it.

    A mirror that cannot be listed (a wrong bucket, missing permissions) must not keep
    every other mirror from applying its changes; its own events are still applied as
    they come. Returns the mirrors that could not be reconciled, or None when stopped.
    """
    pending = list(mirrors)
    backoff = Backoff()
    for attempt in range(1, BOOTSTRAP_PASSES + 1):
        failed: list[Mirror] = []
        for mirror in pending:
            try:
                report = await stop.unless_stopping(reconcile_all([mirror], concurrency))
            except TRANSIENT_ERRORS as exc:
                log.warning(
                    "%s: reconcile failed (attempt %d of %d): %s",
                    mirror.name,
                    attempt,
                    BOOTSTRAP_PASSES,
                    exc,
                )
                failed.append(mirror)
                continue
            if report is None:
                return None
            recorder.reconciled(
                mirror.name, report.downloaded, report.deleted, report.failed, report.seconds
            )
            if report.failed:
                failed.append(mirror)
        pending = failed
        if not pending or attempt == BOOTSTRAP_PASSES:
            break
        await stop.sleep(backoff.next())
    for mirror in pending:
        recorder.error("reconcile", f"{mirror.name}: could not be reconciled")
        log.error(
            "%s: could not be reconciled at start-up; its events are still applied."
            " Restart the agent to retry (`s3pull sync` waits for it to stop)",
            mirror.name,
        )
    return pending

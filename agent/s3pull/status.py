"""What the daemon is doing, kept for ``s3pull status`` and systemd's STATUS line.

The daemon records into ``Stats`` as it works and writes a snapshot to
``<state_directory>/status.json`` on every tick; ``s3pull status`` reads it back, checks
the process is alive, adds the queue's depth from SQS, and says whether this server is in
sync.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

# Defined with the other error types, so that `cli` can catch it without importing this.
from s3pull.errors import StateDirectoryBusy

__all__ = [
    "LOCK_FILE",
    "STATUS_FILE",
    "StateDirectoryBusy",
    "Stats",
    "claim_state_directory",
    "problems",
    "read_snapshot",
    "write_snapshot",
]

STATUS_FILE: Final = "status.json"
LOCK_FILE: Final = "agent.lock"
HISTORY: Final = 10  # entries kept per list: enough to answer "what happened last?"
# A change that failed is retried at most 15 minutes later (inbox.retry_later). One that
# has not failed again for an hour is no longer being retried: it was dead-lettered
# (status reports the dead-letter queue on its own) or removed by hand.
STILL_FAILING_SECONDS: Final = 3600.0
EXAMPLES: Final = 3  # failing keys shown per mirror or trigger


def _count(number: int, one: str, many: str) -> str:
    return f"{number} {one if number == 1 else many}"


def _now() -> float:
    return time.time()


@dataclass(slots=True)
class Stats:
    applied: int = 0
    refused: int = 0
    errors: int = 0
    trigger_runs: int = 0
    trigger_failures: int = 0
    empty_batches: int = 0  # commands run on a batch with no files
    on_change_runs: int = 0
    on_change_failures: int = 0
    # Mirror -> its last on_change run {"result", "paths", "at"}.
    last_on_change: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Mirror -> its max_bandwidth limiter's report (bandwidth.TokenBucket.report).
    bandwidth: dict[str, dict[str, float | int]] = field(default_factory=dict)
    phase: str = "starting"
    started_at: float = field(default_factory=_now)
    last_change_at: float | None = None
    lag_seconds: float | None = None
    queue_urls: list[str] = field(default_factory=list)
    last_changes: dict[str, deque[dict[str, Any]]] = field(default_factory=dict)
    recent_runs: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=HISTORY))
    # Where the last trigger results went (or why they could not be written).
    recent_results: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=HISTORY))
    results_unwritten: int = 0
    recent_refusals: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=HISTORY))
    recent_errors: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=HISTORY))
    last_reconcile: dict[str, Any] | None = None
    # What is failing now, cleared when it works: where ("data", "trigger:orders") ->
    # key or batch -> {"error", "since", "at", "attempts"}.
    failing: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    # Mirror -> what its last reconcile left undone (cleared by one that leaves nothing).
    reconcile_failures: dict[str, str] = field(default_factory=dict)
    # Mirror -> {"deletions", "reason", "at"}: what the mass-deletion guard keeps back.
    held_back: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Mirror -> {"last_at", "next_at", "interval"}: its full reconciles, done and due.
    reconciles: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Mirror -> archived key -> "archived" (skipped) or "restoring": keys S3 holds but
    # cannot serve yet; a key leaves once it is fetched (or deleted).
    archived: dict[str, dict[str, str]] = field(default_factory=dict)

    def failure(self, where: str, key: str, message: str) -> None:
        """``key`` (a mirror's key, a trigger's batch) failed and will be retried."""
        now = _now()
        entry = self.failing.setdefault(where, {}).setdefault(
            key, {"key": key, "since": now, "attempts": 0}
        )
        entry.update(error=message, at=now, attempts=entry["attempts"] + 1)

    def cleared(self, where: str, key: str) -> None:
        """``key`` applied (or was refused for good): it is not failing any more."""
        keys = self.failing.get(where)
        if keys is not None and keys.pop(key, None) is not None and not keys:
            del self.failing[where]

    def reconcile_result(self, mirror: str, problem: str | None) -> None:
        if problem is None:
            self.reconcile_failures.pop(mirror, None)
        else:
            self.reconcile_failures[mirror] = problem

    def forget_mirrors_except(self, names: set[str]) -> None:
        """A reload removed mirrors: what they held back or had scheduled is moot."""
        for mirror in [m for m in self.held_back if m not in names]:
            del self.held_back[mirror]
        for mirror in [m for m in self.reconciles if m not in names]:
            del self.reconciles[mirror]

    def held_back_result(self, mirror: str, deletions: int, reason: str | None) -> None:
        if deletions:
            self.held_back[mirror] = {"deletions": deletions, "reason": reason, "at": _now()}
        else:
            self.held_back.pop(mirror, None)

    def reconcile_schedule(self, mirror: str, interval: float, next_at: float | None) -> None:
        entry = self.reconciles.setdefault(mirror, {"last_at": None})
        entry.update(interval=interval, next_at=next_at)

    def failing_now(self) -> dict[str, list[dict[str, Any]]]:
        """What is failing now, per place, newest failure first; forgets what stopped
        being retried (see STILL_FAILING_SECONDS)."""
        horizon = _now() - STILL_FAILING_SECONDS
        current: dict[str, list[dict[str, Any]]] = {}
        for where in list(self.failing):
            keys = self.failing[where]
            for key in [k for k, entry in keys.items() if entry["at"] < horizon]:
                self.cleared(where, key)
            if keys:
                current[where] = sorted(keys.values(), key=lambda e: e["at"], reverse=True)
        return current

    def change(self, mirror: str, key: str, outcome: str, size: int) -> None:
        self.applied += 1
        self.last_change_at = _now()
        history = self.last_changes.setdefault(mirror, deque(maxlen=HISTORY))
        history.append({"key": key, "outcome": outcome, "bytes": size, "at": self.last_change_at})
        if outcome in ("archived", "restoring"):
            self.archived.setdefault(mirror, {})[key] = outcome
        elif mirror in self.archived:
            archived = self.archived[mirror]
            archived.pop(key, "")
            if not archived:
                del self.archived[mirror]

    def refusal(self, where: str, key: str, reason: str) -> None:
        self.refused += 1
        self.recent_refusals.append({"where": where, "key": key, "reason": reason, "at": _now()})

    def error(self, message: str) -> None:
        self.errors += 1
        self.recent_errors.append({"message": message, "at": _now()})

    def trigger_run(self, trigger: str, batch: str, result: str, seconds: float) -> None:
        if result.startswith("succeeded"):
            self.trigger_runs += 1
        if result == "succeeded-empty":
            self.empty_batches += 1
        elif result == "failed":
            self.trigger_failures += 1
        self.recent_runs.append(
            {
                "trigger": trigger,
                "batch": batch,
                "result": result,
                "seconds": round(seconds, 3),
                "at": _now(),
            }
        )

    def trigger_result(
        self, trigger: str, batch: str, result: str | None, url: str, error: str | None
    ) -> None:
        if error is not None:
            self.results_unwritten += 1
        self.recent_results.append(
            {
                "trigger": trigger,
                "batch": batch,
                "result": result,
                "url": url,
                "written": error is None,
                "error": error,
                "at": _now(),
            }
        )

    def on_change(self, mirror: str, result: str, paths: int) -> None:
        self.on_change_runs += 1
        if result != "succeeded":
            self.on_change_failures += 1
        self.last_on_change[mirror] = {"result": result, "paths": paths, "at": _now()}

    def reconcile(
        self, downloaded: int, deleted: int, failed: int, seconds: float, mirror: str = ""
    ) -> None:
        if mirror:
            self.reconciles.setdefault(mirror, {"next_at": None, "interval": None})["last_at"] = (
                _now()
            )
        self.last_reconcile = {
            "downloaded": downloaded,
            "deleted": deleted,
            "failed": failed,
            "seconds": round(seconds, 3),
            "at": _now(),
        }

    def health(self) -> str:
        """The phase, or ``failing: <places>`` while a change or reconcile is failing, or
        ``holding back deletions: <mirrors>``."""
        failing = self.failing_now()
        if self.phase in ("in sync", "stopped") and (failing or self.reconcile_failures):
            return f"failing: {', '.join(sorted({*failing, *self.reconcile_failures}))}"
        if self.phase in ("in sync", "stopped") and self.held_back:
            return f"holding back deletions: {', '.join(sorted(self.held_back))}"
        return self.phase

    def line(self, in_flight: int = 0) -> str:
        """One line for systemd's STATUS=: the phase (``behind: N message(s) in flight``
        while an otherwise healthy agent is working) and the counters."""
        phase = self.health()
        if phase == "in sync" and in_flight:
            phase = f"behind: {in_flight} message(s) in flight"
        ago = (
            f", last change {_now() - self.last_change_at:.0f}s ago"
            if self.last_change_at is not None
            else ""
        )
        runs = (
            f", {_count(self.trigger_runs, 'batch', 'batches')} run,"
            f" {self.trigger_failures} failed"
            + (f" ({self.empty_batches} empty)" if self.empty_batches else "")
            if self.trigger_runs or self.trigger_failures
            else ""
        )
        return (
            f"{phase}; {_count(self.applied, 'change', 'changes')} applied,"
            f" {self.refused} refused, {_count(self.errors, 'error', 'errors')}{runs}{ago}"
        )

    def snapshot(self, in_flight: int) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "updated_at": _now(),
            "started_at": self.started_at,
            "phase": self.phase,
            "in_flight": in_flight,
            "queue_urls": self.queue_urls,
            "counters": {
                "applied": self.applied,
                "refused": self.refused,
                "errors": self.errors,
                "trigger_runs": self.trigger_runs,
                "trigger_failures": self.trigger_failures,
                "empty_batches": self.empty_batches,
                "results_unwritten": self.results_unwritten,
                "on_change_runs": self.on_change_runs,
                "on_change_failures": self.on_change_failures,
            },
            "on_change": dict(self.last_on_change),
            "bandwidth": dict(self.bandwidth),
            "lag_seconds": self.lag_seconds,
            "last_change_at": self.last_change_at,
            "last_changes": {mirror: list(h) for mirror, h in self.last_changes.items()},
            "trigger_runs": list(self.recent_runs),
            "trigger_results": list(self.recent_results),
            "refused": list(self.recent_refusals),
            "errors": list(self.recent_errors),
            "last_reconcile": self.last_reconcile,
            "failing": {
                where: {"count": len(entries), "examples": entries[:EXAMPLES]}
                for where, entries in self.failing_now().items()
            },
            "reconcile_failures": dict(self.reconcile_failures),
            "held_back": dict(self.held_back),
            "reconciles": {mirror: dict(entry) for mirror, entry in self.reconciles.items()},
            "archived": {
                mirror: {
                    "skipped": sum(1 for o in keys.values() if o == "archived"),
                    "restoring": sum(1 for o in keys.values() if o == "restoring"),
                    "examples": sorted(keys)[:EXAMPLES],
                }
                for mirror, keys in sorted(self.archived.items())
            },
        }


def write_snapshot(state_directory: Path, snapshot: dict[str, Any]) -> None:
    """Replace the status file atomically: a reader never sees half of it."""
    target = state_directory / STATUS_FILE
    temporary = target.with_name(f".{STATUS_FILE}.tmp")
    temporary.write_text(json.dumps(snapshot, indent=1))
    os.replace(temporary, target)


def read_snapshot(state_directory: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((state_directory / STATUS_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# -- `s3pull status` -------------------------------------------------------------------

ALIVE_WITHIN_SECONDS: Final = 30.0  # the daemon rewrites its status every 5 s


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but another user's (status run without root)
        return True
    return True


async def queue_depths(sqs: Any, queue_url: str) -> dict[str, Any]:
    """Visible, in flight, and the dead-letter queue's depth, from SQS itself."""
    attributes = (
        await sqs.get_queue_attributes(
            QueueUrl=queue_url,
            AttributeNames=[
                "ApproximateNumberOfMessages",
                "ApproximateNumberOfMessagesNotVisible",
                "RedrivePolicy",
            ],
        )
    )["Attributes"]
    depths: dict[str, Any] = {
        "url": queue_url,
        "visible": int(attributes.get("ApproximateNumberOfMessages", 0)),
        "in_flight": int(attributes.get("ApproximateNumberOfMessagesNotVisible", 0)),
        "dead_letter_url": None,
        "dead_lettered": None,
    }
    redrive = attributes.get("RedrivePolicy")
    if redrive:
        dead_name = json.loads(redrive)["deadLetterTargetArn"].rsplit(":", 1)[1]
        dead_url = (await sqs.get_queue_url(QueueName=dead_name))["QueueUrl"]
        dead = (
            await sqs.get_queue_attributes(
                QueueUrl=dead_url, AttributeNames=["ApproximateNumberOfMessages"]
            )
        )["Attributes"]
        depths["dead_letter_url"] = dead_url
        depths["dead_lettered"] = int(dead.get("ApproximateNumberOfMessages", 0))
    return depths


def _place(where: str) -> str:
    return f"trigger {where[8:]}" if where.startswith("trigger:") else f"mirror {where}"


def problems(snapshot: dict[str, Any] | None, queues: list[dict[str, Any]]) -> list[str]:
    """Everything that keeps this server from being in sync, one line each: changes
    failing now, reconciles that left files behind, dead letters, queues SQS would not
    describe. Empty when nothing is wrong."""
    found: list[str] = []
    daemon = snapshot or {}
    for where, failing in sorted(daemon.get("failing", {}).items()):
        what = "batch(es)" if where.startswith("trigger:") else "change(s)"
        latest = failing["examples"][0]
        found.append(
            f"{_place(where)}: {failing['count']} {what} failing, latest {latest['key']}:"
            f" {latest['error']} ({latest['attempts']} attempt(s))"
        )
    for mirror, problem in sorted(daemon.get("reconcile_failures", {}).items()):
        found.append(f"mirror {mirror}: {problem} (a restart reconciles again)")
    for mirror, held in sorted(daemon.get("held_back", {}).items()):
        found.append(
            f"mirror {mirror}: {held['deletions']} deletion(s) held back, nothing deleted:"
            f" {held['reason']} (if S3 is right: stop the agent, run"
            " `s3pull sync --allow-mass-delete`, start it again)"
        )
    for queue in queues:
        name = str(queue["url"]).rsplit("/", 1)[-1]
        if "error" in queue:
            found.append(f"queue {name}: cannot ask SQS, so dead letters are unknown")
        elif queue.get("dead_lettered"):
            found.append(
                f"queue {name}: {queue['dead_lettered']} dead-lettered message(s) (see: s3pull"
                " dlq list; they stay until `s3pull dlq redrive` or a purge)"
            )
    return found


def verdict(snapshot: dict[str, Any] | None, alive: bool, queues: list[dict[str, Any]]) -> str:
    """One word an operator can act on: IN SYNC, BEHIND, BOOTSTRAPPING, BACKING OFF,
    FAILING (changes or a reconcile failing now), HELD BACK (deletions kept back by the
    mass-deletion guard), DEAD LETTERS, UNKNOWN (SQS would not say), NOT RUNNING. Only
    IN SYNC means nothing is wrong."""
    if snapshot is None or not alive:
        return "NOT RUNNING"
    phase = str(snapshot.get("phase", ""))
    if phase.startswith("backing off"):
        return "BACKING OFF"
    if phase in ("starting", "bootstrapping", "recreating the queue"):
        return "BOOTSTRAPPING"
    if snapshot.get("failing") or snapshot.get("reconcile_failures"):
        return "FAILING"
    if snapshot.get("held_back"):
        return "HELD BACK"
    if any(queue.get("dead_lettered") for queue in queues):
        return "DEAD LETTERS"
    if any("error" in queue for queue in queues):
        return "UNKNOWN"
    if any(queue.get("visible") for queue in queues):
        return "BEHIND"
    return "IN SYNC"


# -- one agent per state directory ---------------------------------------------------------


@contextlib.contextmanager
def claim_state_directory(directory: Path, verb: str) -> Iterator[None]:
    """Hold the state directory while the block runs: an flock on ``agent.lock``, which
    the kernel also releases when the process ends, however it ends (no stale lock after
    a crash). The file names the holder, so the one refused can say who holds it.
    Raises StateDirectoryBusy."""
    directory.mkdir(parents=True, exist_ok=True)
    # Not truncated before the lock is ours: the holder's pid must survive our attempt.
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").split()
        os.close(fd)
        described = f"pid {holder[0]}, s3pull {' '.join(holder[1:])}" if holder else "pid unknown"
        raise StateDirectoryBusy(directory, described) from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {verb}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # the lock goes with it; the stale pid is harmless

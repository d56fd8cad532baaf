"""The agent's memory: what it last applied for each key of each mirror.

A small SQLite file in ``state_directory``. It makes duplicate events cheap (a
conditional GET on the ETag we hold) and lets a reconcile tell a current file from a
drifted one. It also keeps, per key, the ``sequencer`` of the last event S3 confirmed, so
an older event can be skipped without a request: the sequencer may save work, never lose
it (see ``is_stale``). Losing it
costs a full re-download, never correctness: S3 stays the truth.
"""

from __future__ import annotations

import re
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from s3pull.events import sequencer_newer

__all__ = ["Entry", "Ledger", "plausible_sequencer"]

# Real sequencers are 16 to 18 hex digits today; a little room for growth, but never a
# forged "F" that, padded with zeros, would outrank every real one.
_PLAUSIBLE_SEQUENCER = re.compile(r"[0-9A-Fa-f]{16,32}")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    mirror    TEXT NOT NULL,
    key       TEXT NOT NULL,
    present   INTEGER NOT NULL,  -- 1: file written from this etag; 0: known deleted
    etag      TEXT,
    size      INTEGER,
    mtime_ns  INTEGER,           -- the mtime we gave the file (S3 LastModified)
    sequencer TEXT,              -- of the last event S3 confirmed (None: nothing to go by)
    PRIMARY KEY (mirror, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS trigger_runs (
    trigger      TEXT NOT NULL,
    event_id     TEXT NOT NULL,  -- one version of the marker object, as S3 reported it
    batch_prefix TEXT NOT NULL,
    finished_at  REAL NOT NULL,  -- unix time
    PRIMARY KEY (trigger, event_id)
) WITHOUT ROWID;
"""


@dataclass(frozen=True, slots=True)
class Entry:
    present: bool
    etag: str | None
    size: int | None
    mtime_ns: int | None
    sequencer: str | None


def _newest(a: str | None, b: str | None) -> str | None:
    if a is None or b is None:
        return a or b
    return a if sequencer_newer(a, b) else b


def plausible_sequencer(sequencer: str | None) -> bool:
    return sequencer is not None and _PLAUSIBLE_SEQUENCER.fullmatch(sequencer) is not None


class Ledger:
    """Per-(mirror, key) state. Each call is one short local transaction."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # isolation_level=None: autocommit; every statement below is its own transaction.
        self._db = sqlite3.connect(path, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    @classmethod
    def open(cls, state_directory: Path) -> Ledger:
        state_directory.mkdir(mode=0o750, parents=True, exist_ok=True)
        return cls(state_directory / "ledger.sqlite3")

    def close(self) -> None:
        self._db.close()

    def get(self, mirror: str, key: str) -> Entry | None:
        row = self._db.execute(
            "SELECT present, etag, size, mtime_ns, sequencer FROM objects"
            " WHERE mirror = ? AND key = ?",
            (mirror, key),
        ).fetchone()
        if row is None:
            return None
        return Entry(bool(row[0]), row[1], row[2], row[3], row[4])

    def is_stale(self, mirror: str, key: str, sequencer: str | None) -> bool:
        """Is an event with ``sequencer`` strictly older than the last one S3 confirmed?

        Only then may it be skipped without asking S3. An equal, missing, malformed or
        implausible sequencer is never stale: the event falls through to a conditional
        request, which costs little for a duplicate and loses nothing otherwise.
        """
        entry = self.get(mirror, key)
        bar = entry.sequencer if entry is not None else None
        if sequencer is None or bar is None:
            return False
        if not (plausible_sequencer(sequencer) and plausible_sequencer(bar)):
            return False
        return sequencer_newer(bar, sequencer)

    def reset_sequencers(self, mirror: str, under: str = "") -> None:
        """Forget every sequencer bar of ``mirror`` below ``under`` (after a reconcile)."""
        self._db.execute(
            "UPDATE objects SET sequencer = NULL"
            " WHERE mirror = ? AND substr(key, 1, ?) = ? AND sequencer IS NOT NULL",
            (mirror, len(under), under),
        )

    def entries(self, mirror: str, under: str = "") -> dict[str, Entry]:
        """Every entry of ``mirror`` whose key starts with ``under``."""
        rows = self._db.execute(
            "SELECT key, present, etag, size, mtime_ns, sequencer FROM objects"
            " WHERE mirror = ? AND substr(key, 1, ?) = ?",
            (mirror, len(under), under),
        )
        return {row[0]: Entry(bool(row[1]), row[2], row[3], row[4], row[5]) for row in rows}

    def record_present(
        self,
        mirror: str,
        key: str,
        etag: str | None,
        size: int,
        mtime_ns: int,
        sequencer: str | None = None,
    ) -> None:
        self._record(mirror, key, True, etag, size, mtime_ns, sequencer)

    def record_absent(self, mirror: str, key: str, sequencer: str | None = None) -> None:
        self._record(mirror, key, False, None, None, None, sequencer)

    def _record(
        self,
        mirror: str,
        key: str,
        present: bool,
        etag: str | None,
        size: int | None,
        mtime_ns: int | None,
        sequencer: str | None,
    ) -> None:
        # ``sequencer`` is one S3 confirmed, or None. S3's history only moves forward, so
        # the newest confirmed one stays a valid bar until a reconcile resets it.
        if not plausible_sequencer(sequencer):
            sequencer = None
        previous = self.get(mirror, key)
        if previous is not None and plausible_sequencer(previous.sequencer):
            sequencer = _newest(sequencer, previous.sequencer)
        self._db.execute(
            "INSERT OR REPLACE INTO objects (mirror, key, present, etag, size, mtime_ns, sequencer)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (mirror, key, int(present), etag, size, mtime_ns, sequencer),
        )

    def trigger_ran(self, trigger: str, marker_version: str) -> bool:
        """Did a command already succeed for this version of a marker object?"""
        # The column keeps its old name: renaming it would need a migration for nothing.
        row = self._db.execute(
            "SELECT 1 FROM trigger_runs WHERE trigger = ? AND event_id = ?",
            (trigger, marker_version),
        ).fetchone()
        return row is not None

    def record_trigger_run(self, trigger: str, marker_version: str, batch_prefix: str) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO trigger_runs (trigger, event_id, batch_prefix, finished_at)"
            " VALUES (?, ?, ?, ?)",
            (trigger, marker_version, batch_prefix, time.time()),
        )

    def forget(self, mirror: str, key: str) -> None:
        self._db.execute("DELETE FROM objects WHERE mirror = ? AND key = ?", (mirror, key))

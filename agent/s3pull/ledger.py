"""The agent's memory: what it last applied for each key of each mirror.

A small SQLite file in ``state_directory``. It makes duplicate events cheap (a
conditional GET on the ETag we hold) and stale events harmless (the newest ``sequencer``
seen per key), and lets a reconcile tell a current file from a drifted one. Losing it
costs a full re-download, never correctness: S3 stays the truth.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from s3pull.events import sequencer_newer

__all__ = ["Entry", "Ledger"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    mirror    TEXT NOT NULL,
    key       TEXT NOT NULL,
    present   INTEGER NOT NULL,  -- 1: file written from this etag; 0: known deleted
    etag      TEXT,
    size      INTEGER,
    mtime_ns  INTEGER,           -- the mtime we gave the file (S3 LastModified)
    sequencer TEXT,              -- newest event sequencer applied, when S3 sent one
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
        # Never let the remembered sequencer go backwards: it is the bar stale events
        # are measured against.
        previous = self.get(mirror, key)
        if previous is not None:
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

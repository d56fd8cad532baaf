"""The agent's memory: what it last applied for each key of each mirror.

A small SQLite file in ``state_directory``. It makes duplicate events cheap (a
conditional GET on the ETag we hold) and lets a reconcile tell a current file from a
drifted one. It also keeps, per key, the ``sequencer`` of the last event S3 confirmed, so
an older event can be skipped without a request: the sequencer may save work, never lose
it (see ``is_stale``). Losing it costs no correctness, S3 stays the truth: a reconcile
fills a fresh ledger again, adopting files that already match the listing.

Nothing local may stop the agent (SPEC, Round 2): a corrupt file is moved aside
(``ledger.sqlite3.corrupt-<time>``, its ``-wal``/``-shm`` beside it) and a fresh one
started, at open or whenever a call finds it; a write lock held by another process makes
a call fail within ``BUSY_TIMEOUT`` with ``LedgerBusy`` instead of stalling the event
loop; keys UTF-8 cannot carry (file names that are not UTF-8) are stored as BLOBs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, ParamSpec, TypeVar

from s3pull.errors import LedgerBusy, LedgerUnavailable
from s3pull.events import sequencer_newer

__all__ = ["BUSY_TIMEOUT", "Entry", "Ledger", "patiently", "plausible_sequencer"]

log = logging.getLogger(__name__)

_P = ParamSpec("_P")
_T = TypeVar("_T")

# How long one call may wait for another process's lock. Every call runs on the event
# loop, so this bounds how long the loop can stall on the ledger: far below any watchdog
# interval. (It was 30 s, as long as WatchdogSec: issue 12, item 10.)
BUSY_TIMEOUT: Final = 0.05

# Primary result codes (https://www.sqlite.org/rescode.html).
_SQLITE_BUSY: Final = 5
_SQLITE_LOCKED: Final = 6
_SQLITE_CORRUPT: Final = 11
_SQLITE_NOTADB: Final = 26

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


def _stored(text: str) -> str | bytes:
    """A key as SQLite stores it: TEXT when UTF-8 can carry it, else a BLOB.

    A file name that is not UTF-8 reaches us as ``os.fsdecode`` makes it (lone surrogates),
    and a JSON escape can carry a lone surrogate too; SQLite's TEXT cannot hold either.
    ``surrogatepass`` round-trips any str, and a BLOB never equals a TEXT in SQLite, so
    no such key can shadow a real one.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")
    return text


def _loaded(value: str | bytes) -> str:
    return value.decode("utf-8", "surrogatepass") if isinstance(value, bytes) else value


def _bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def _code(exc: sqlite3.Error) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None


def _is_busy(exc: sqlite3.Error) -> bool:
    return _code(exc) in (_SQLITE_BUSY, _SQLITE_LOCKED)


def _is_corrupt(exc: sqlite3.Error) -> bool:
    return _code(exc) in (_SQLITE_CORRUPT, _SQLITE_NOTADB)


def _prepare(db: sqlite3.Connection) -> None:
    # Reading the schema is the first read of the file: garbage fails here.
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
        # WAL: readers never wait for a writer, and a writer for no reader.
        db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    if not {"objects", "trigger_runs"} <= tables:
        # Only a new file needs the write lock here: opening while another process
        # writes (a restart, `s3pull sync`) must not wait for it.
        db.executescript(_SCHEMA)


class Ledger:
    """Per-(mirror, key) state. Each call is one short local transaction, bounded by
    ``BUSY_TIMEOUT``: it raises ``LedgerBusy`` while another process holds the lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        #: The file was found corrupt and replaced by a fresh, empty one (at open or since).
        self.rebuilt = False
        #: Called with the moved-aside path when corruption is found after open: the
        #: owner may want a full reconcile to fill the fresh ledger (the daemon does).
        self.on_rebuilt: Callable[[Path], None] | None = None
        self._db = self._connect()
        try:
            _prepare(self._db)
        except sqlite3.DatabaseError as exc:
            if not _is_corrupt(exc):
                self._db.close()
                if _is_busy(exc):
                    raise LedgerBusy(f"ledger {path} is locked by another process") from exc
                raise
            self._replace(exc)

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: autocommit; every statement below is its own transaction.
        return sqlite3.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT)

    @classmethod
    def open(cls, state_directory: Path) -> Ledger:
        state_directory.mkdir(mode=0o750, parents=True, exist_ok=True)
        return cls(state_directory / "ledger.sqlite3")

    def close(self) -> None:
        self._db.close()

    def _replace(self, exc: sqlite3.Error) -> Path:
        """Move the corrupt file aside, then start a fresh one."""
        # Moved while still open: closing first would let SQLite checkpoint the WAL into
        # the corrupt file and delete it, and the evidence with it.
        aside = self._move_aside(exc)
        with contextlib.suppress(sqlite3.Error):
            self._db.close()
        self._db = self._connect()
        _prepare(self._db)
        return aside

    def _move_aside(self, exc: sqlite3.Error) -> Path:
        """Keep the corrupt file as evidence, with its WAL where SQLite looks for it."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        n = 1
        while aside.exists():
            n += 1
            aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}")
        for suffix in ("-wal", "-shm", ""):  # the database last: its name is the claim
            with contextlib.suppress(FileNotFoundError):
                Path(f"{self.path}{suffix}").rename(f"{aside}{suffix}")
        self.rebuilt = True
        log.error(
            "ledger %s is corrupt (%s): moved it aside to %s and started a fresh ledger;"
            " a full reconcile rebuilds it (files that already match S3 by size and time"
            " are kept, not downloaded again)",
            self.path,
            exc,
            aside,
        )
        return aside

    def _call(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``work`` on the database: a lock held elsewhere becomes ``LedgerBusy``
        at once; corruption moves the file aside and runs ``work`` on a fresh one."""
        try:
            return work(self._db)
        except sqlite3.DatabaseError as exc:
            if _is_busy(exc):
                raise LedgerBusy(f"ledger {self.path} is locked by another process") from exc
            if not _is_corrupt(exc):
                raise LedgerUnavailable(f"ledger {self.path}: {exc}") from exc
            aside = self._replace(exc)
        if self.on_rebuilt is not None:
            self.on_rebuilt(aside)
        return work(self._db)

    def get(self, mirror: str, key: str) -> Entry | None:
        row = self._call(
            lambda db: db.execute(
                "SELECT present, etag, size, mtime_ns, sequencer FROM objects"
                " WHERE mirror = ? AND key = ?",
                (mirror, _stored(key)),
            ).fetchone()
        )
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
        # Compared as bytes, so TEXT and BLOB keys alike match by their UTF-8 prefix.
        prefix = _bytes(under)
        self._call(
            lambda db: db.execute(
                "UPDATE objects SET sequencer = NULL WHERE mirror = ?"
                " AND substr(CAST(key AS BLOB), 1, ?) = ? AND sequencer IS NOT NULL",
                (mirror, len(prefix), prefix),
            )
        )

    def entries(self, mirror: str, under: str = "") -> dict[str, Entry]:
        """Every entry of ``mirror`` whose key starts with ``under``."""
        prefix = _bytes(under)
        rows = self._call(
            lambda db: db.execute(
                "SELECT key, present, etag, size, mtime_ns, sequencer FROM objects"
                " WHERE mirror = ? AND substr(CAST(key AS BLOB), 1, ?) = ?",
                (mirror, len(prefix), prefix),
            ).fetchall()
        )
        return {
            _loaded(row[0]): Entry(bool(row[1]), row[2], row[3], row[4], row[5]) for row in rows
        }

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
        row = (mirror, _stored(key), int(present), etag, size, mtime_ns, sequencer)
        self._call(
            lambda db: db.execute(
                "INSERT OR REPLACE INTO objects"
                " (mirror, key, present, etag, size, mtime_ns, sequencer)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                row,
            )
        )

    def trigger_ran(self, trigger: str, marker_version: str) -> bool:
        """Did a command already succeed for this version of a marker object?"""
        # The column keeps its old name: renaming it would need a migration for nothing.
        row = self._call(
            lambda db: db.execute(
                "SELECT 1 FROM trigger_runs WHERE trigger = ? AND event_id = ?",
                (trigger, _stored(marker_version)),
            ).fetchone()
        )
        return row is not None

    def record_trigger_run(self, trigger: str, marker_version: str, batch_prefix: str) -> None:
        run = (trigger, _stored(marker_version), _stored(batch_prefix), time.time())
        self._call(
            lambda db: db.execute(
                "INSERT OR REPLACE INTO trigger_runs"
                " (trigger, event_id, batch_prefix, finished_at) VALUES (?, ?, ?, ?)",
                run,
            )
        )

    def forget(self, mirror: str, key: str) -> None:
        self._call(
            lambda db: db.execute(
                "DELETE FROM objects WHERE mirror = ? AND key = ?", (mirror, _stored(key))
            )
        )


async def patiently(call: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
    """Call a ledger method until no other process holds the lock, sleeping (never
    blocking the loop) in between: for a write that must not be lost, such as a trigger
    run already done, where handing the message back would run the command again."""
    delay = BUSY_TIMEOUT
    waited = 0.0
    while True:
        try:
            return call(*args, **kwargs)
        except LedgerBusy as exc:
            if waited == 0.0:
                log.warning("%s; waiting for it", exc)
            await asyncio.sleep(delay)
            waited += delay
            delay = min(delay * 2, 1.0)

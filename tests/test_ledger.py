"""ledger: the per-key SQLite state, on a real file under tmp_path."""

from __future__ import annotations

import asyncio
import sqlite3
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from s3pull.errors import LedgerBusy
from s3pull.ledger import Entry, Ledger, patiently

OLD = "0055AED6DCD90281E5"
NEW = "0055AED6DCD90281E6"
NEWER = "0055AED6DCD90281E601"  # longer: compared after right-padding with zeros
MTIME_NS = 1_700_000_000_123_456_789


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "var" / "lib" / "s3pull"


@pytest.fixture
def ledger(state: Path) -> Iterator[Ledger]:
    opened = Ledger.open(state)
    yield opened
    opened.close()


def test_open_creates_the_state_directory(state: Path) -> None:
    assert not state.exists()
    ledger = Ledger.open(state)
    try:
        assert state.is_dir()
        assert ledger.path.parent == state
        assert ledger.path.is_file()
        assert stat.S_IMODE(state.stat().st_mode) & 0o007 == 0  # not world-readable
    finally:
        ledger.close()


def test_open_an_existing_directory(state: Path) -> None:
    state.mkdir(parents=True)
    Ledger.open(state).close()
    Ledger.open(state).close()


def test_record_present_round_trip(ledger: Ledger) -> None:
    assert ledger.get("assets", "assets/a.css") is None
    assert ledger.entries("assets") == {}

    ledger.record_present("assets", "assets/a.css", "etag-a", 10, MTIME_NS, OLD)
    ledger.record_present("assets", "assets/b c.css", None, 0, MTIME_NS + 1)
    ledger.record_present("other", "assets/a.css", "etag-other", 3, 5)

    a = Entry(present=True, etag="etag-a", size=10, mtime_ns=MTIME_NS, sequencer=OLD)
    b = Entry(present=True, etag=None, size=0, mtime_ns=MTIME_NS + 1, sequencer=None)
    assert ledger.get("assets", "assets/a.css") == a
    assert ledger.entries("assets") == {"assets/a.css": a, "assets/b c.css": b}
    # Mirrors are separate namespaces even for the same key.
    assert ledger.entries("other") == {
        "assets/a.css": Entry(True, "etag-other", 3, 5, None),
    }
    assert ledger.get("nobody", "assets/a.css") is None


def test_record_present_replaces_the_previous_state(ledger: Ledger) -> None:
    ledger.record_present("m", "k", "etag-1", 1, 1, OLD)
    ledger.record_present("m", "k", "etag-2", 2, 2, NEW)
    assert ledger.get("m", "k") == Entry(True, "etag-2", 2, 2, NEW)
    assert len(ledger.entries("m")) == 1


def test_record_absent(ledger: Ledger) -> None:
    ledger.record_present("m", "k", "etag", 5, MTIME_NS, OLD)
    ledger.record_absent("m", "k", NEW)
    assert ledger.get("m", "k") == Entry(False, None, None, None, NEW)

    ledger.record_absent("m", "never-seen")
    assert ledger.get("m", "never-seen") == Entry(False, None, None, None, None)
    assert set(ledger.entries("m")) == {"k", "never-seen"}


def test_newer_sequencer_replaces_older(ledger: Ledger) -> None:
    ledger.record_present("m", "k", "e1", 1, 1, OLD)
    ledger.record_present("m", "k", "e2", 2, 2, NEW)
    assert ledger.get("m", "k") == Entry(True, "e2", 2, 2, NEW)
    ledger.record_absent("m", "k", NEWER)
    assert ledger.get("m", "k") == Entry(False, None, None, None, NEWER)


def test_the_bar_never_goes_backwards_until_a_reconcile_resets_it(ledger: Ledger) -> None:
    ledger.record_present("m", "k", "e2", 2, 2, NEW)
    assert ledger.is_stale("m", "k", OLD)

    # What the caller applied is recorded; the bar (the newest sequencer S3 confirmed)
    # stays, since S3's history only moves forward.
    ledger.record_present("m", "k", "e1", 1, 1, OLD)
    ledger.record_present("m", "k", "e3", 3, 3, None)
    assert ledger.get("m", "k") == Entry(True, "e3", 3, 3, NEW)
    ledger.record_absent("m", "k")
    assert ledger.get("m", "k") == Entry(False, None, None, None, NEW)

    # A reconcile resets it: no earlier belief can make a later event stale any more.
    ledger.reset_sequencers("m")
    assert ledger.get("m", "k") == Entry(False, None, None, None, None)
    assert not ledger.is_stale("m", "k", OLD)


def test_only_a_strictly_older_plausible_sequencer_is_stale(ledger: Ledger) -> None:
    ledger.record_present("m", "k", "e", 1, 1, NEW)
    assert ledger.is_stale("m", "k", OLD)
    assert not ledger.is_stale("m", "k", NEW)  # equal: a duplicate, or LocalStack's constant
    assert not ledger.is_stale("m", "k", NEW + "00")  # equal after padding
    assert not ledger.is_stale("m", "k", NEWER)
    assert not ledger.is_stale("m", "k", None)
    assert not ledger.is_stale("m", "k", "0")  # implausibly short: padded, it outranks nothing
    assert not ledger.is_stale("m", "k", "not-hex-at-all-00")
    assert not ledger.is_stale("m", "never-seen", OLD)


def test_an_implausible_sequencer_is_never_kept_as_the_bar(ledger: Ledger) -> None:
    # Padded with zeros, a forged "F" would outrank every real sequencer and freeze the key.
    ledger.record_present("m", "k", "e", 1, 1, "F")
    assert ledger.get("m", "k") == Entry(True, "e", 1, 1, None)
    assert not ledger.is_stale("m", "k", OLD)


def test_sequencer_order_is_per_key(ledger: Ledger) -> None:
    ledger.record_present("m", "a", "e", 1, 1, NEW)
    ledger.record_present("m", "b", "e", 1, 1, OLD)
    ledger.record_present("n", "a", "e", 1, 1, OLD)
    assert {key: e.sequencer for key, e in ledger.entries("m").items()} == {"a": NEW, "b": OLD}
    entry = ledger.get("n", "a")
    assert entry is not None and entry.sequencer == OLD


def test_data_survives_close_and_reopen(state: Path) -> None:
    first = Ledger.open(state)
    first.record_present("m", "k", "etag", 7, MTIME_NS, NEW)
    first.record_absent("m", "gone", OLD)
    first.close()

    second = Ledger.open(state)
    try:
        assert second.entries("m") == {
            "k": Entry(True, "etag", 7, MTIME_NS, NEW),
            "gone": Entry(False, None, None, None, OLD),
        }
        # The sequencer bar survives too.
        assert second.is_stale("m", "k", OLD)
    finally:
        second.close()


def test_forget(ledger: Ledger) -> None:
    ledger.record_present("m", "k", "etag", 1, 1, NEW)
    ledger.record_present("m", "other", "etag", 1, 1)
    ledger.record_present("n", "k", "etag", 1, 1)

    ledger.forget("m", "k")

    assert ledger.get("m", "k") is None
    assert set(ledger.entries("m")) == {"other"}
    assert ledger.get("n", "k") is not None
    ledger.forget("m", "never-recorded")  # a no-op, not an error
    # Forgetting drops the sequencer bar as well: an old event is accepted again.
    ledger.record_present("m", "k", "etag", 1, 1, OLD)
    entry = ledger.get("m", "k")
    assert entry is not None and entry.sequencer == OLD


# -- local faults: a corrupt file, a lock held by another process, keys SQLite cannot take --


def _aside(state: Path) -> list[Path]:
    return sorted(state.glob("ledger.sqlite3.corrupt-*"))


def test_a_corrupt_ledger_is_moved_aside_loudly_and_a_fresh_one_opened(
    state: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = Ledger.open(state)
    first.record_present("m", "k", "etag", 7, MTIME_NS, NEW)
    first.close()
    garbage = b"\x8b\x1f not a database " * 512
    (state / "ledger.sqlite3").write_bytes(garbage)
    (state / "ledger.sqlite3-wal").write_bytes(b"stale wal")
    (state / "ledger.sqlite3-shm").write_bytes(b"stale shm")

    with caplog.at_level("ERROR", logger="s3pull.ledger"):
        second = Ledger.open(state)
    try:
        assert second.rebuilt
        assert second.get("m", "k") is None  # fresh: the next reconcile fills it
        second.record_present("m", "k", "etag", 7, MTIME_NS)
        assert second.get("m", "k") == Entry(True, "etag", 7, MTIME_NS, None)
    finally:
        second.close()
    # The evidence is kept byte for byte, its WAL beside it where SQLite looks for one,
    # and the log line names where it went.
    main, shm, wal = _aside(state)
    assert (shm.name, wal.name) == (f"{main.name}-shm", f"{main.name}-wal")
    assert main.read_bytes() == garbage
    assert wal.read_bytes() == b"stale wal"
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and str(main) in errors[0].getMessage()
    assert "full reconcile" in errors[0].getMessage()

    # The fresh ledger is a healthy one: opened again, nothing is moved aside.
    third = Ledger.open(state)
    try:
        assert not third.rebuilt
        assert third.get("m", "k") is not None
    finally:
        third.close()
    assert len(_aside(state)) == 3


def test_an_empty_or_truncated_ledger_file_is_handled_too(state: Path) -> None:
    state.mkdir(parents=True)
    (state / "ledger.sqlite3").write_bytes(b"SQLite format 3\x00" + b"\x00" * 20)
    ledger = Ledger.open(state)
    try:
        ledger.record_absent("m", "k")
        assert ledger.get("m", "k") == Entry(False, None, None, None, None)
    finally:
        ledger.close()
    assert len(_aside(state)) == 1


def test_corruption_found_mid_run_rebuilds_and_tells_the_owner(
    state: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ledger = Ledger.open(state)
    told: list[Path] = []
    ledger.on_rebuilt = told.append
    try:
        for n in range(2000):  # several pages, so a page in the middle can be spoiled
            ledger.record_present("m", f"k/{n:05d}", "e" * 32, n, MTIME_NS)
        other = sqlite3.connect(state / "ledger.sqlite3")
        other.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        other.close()
        # Spoil every page but the first (the header and schema) behind SQLite's back,
        # as a bad disk or a stray writer would.
        path = state / "ledger.sqlite3"
        with path.open("r+b") as f:
            f.seek(4096)
            f.write(b"\xff" * (path.stat().st_size - 4096))
        with caplog.at_level("ERROR", logger="s3pull.ledger"):
            # Whatever the call, it finds out, moves the file aside and carries on.
            ledger.record_present("m", "new", "etag", 1, MTIME_NS)
            assert ledger.entries("m") == {"new": Entry(True, "etag", 1, MTIME_NS, None)}
        assert ledger.rebuilt
        assert len(told) == 1 and told[0].name.startswith("ledger.sqlite3.corrupt-")
        assert any(str(told[0]) in r.getMessage() for r in caplog.records)
    finally:
        ledger.close()


def test_a_lock_held_by_another_process_fails_fast_and_reads_go_on(state: Path) -> None:
    ledger = Ledger.open(state)
    ledger.record_present("m", "k", "etag", 1, MTIME_NS)
    # Another process (sqlite3 shell, a second agent, a backup) holds the write lock.
    other = sqlite3.connect(state / "ledger.sqlite3", isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        with pytest.raises(LedgerBusy):
            ledger.record_present("m", "k2", "etag", 1, MTIME_NS)
        with pytest.raises(LedgerBusy):
            ledger.record_trigger_run("t", "v1", "b/")
        blocked = time.monotonic() - started
        assert blocked < 0.5, f"two writes blocked the caller {blocked:.2f} s"
        # LedgerBusy is an OSError (EBUSY): every caller already treats those as transient.
        assert issubclass(LedgerBusy, OSError)
        # WAL: readers never wait for a writer.
        assert ledger.get("m", "k") is not None
        assert not ledger.trigger_ran("t", "v1")
        # Opening another connection meanwhile (a restart, `s3pull sync`) is not delayed.
        started = time.monotonic()
        Ledger.open(state).close()
        assert time.monotonic() - started < 0.5
    finally:
        other.execute("ROLLBACK")
        other.close()
    ledger.record_present("m", "k2", "etag", 1, MTIME_NS)
    assert ledger.get("m", "k2") is not None
    assert not _aside(state)  # a lock is not corruption
    ledger.close()


async def test_patiently_waits_for_the_lock_without_blocking_the_loop(state: Path) -> None:
    ledger = Ledger.open(state)
    other = sqlite3.connect(state / "ledger.sqlite3", isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    async def release_later() -> None:
        await asyncio.sleep(0.6)
        other.execute("ROLLBACK")

    tick_task = asyncio.create_task(ticker())
    release = asyncio.create_task(release_later())
    try:
        await patiently(ledger.record_trigger_run, "t", "v1", "b/")
    finally:
        tick_task.cancel()
        await release
        other.close()
    assert ledger.trigger_ran("t", "v1")
    assert ticks > 20  # the loop went on ticking while the write waited
    ledger.close()


@pytest.mark.parametrize(
    "key",
    [
        "m/caf\udce9.txt",  # a Latin-1 file name, as os.fsdecode hands it over
        "m/\udcff\udcfe",
        "m/lone \ud800 surrogate",  # a JSON escape no UTF-8 can carry
    ],
)
def test_keys_that_utf8_cannot_carry_round_trip(ledger: Ledger, key: str) -> None:
    ledger.record_present("m", "m/café.txt", "etag-text", 1, MTIME_NS, NEW)
    ledger.record_present("m", key, "etag-odd", 2, MTIME_NS, OLD)
    assert ledger.get("m", key) == Entry(True, "etag-odd", 2, MTIME_NS, OLD)
    assert ledger.is_stale("m", key, "0055AED6DCD90281E4")
    # Neither key shadows the other; both come back from a listing under the prefix.
    assert ledger.entries("m", "m/") == {
        "m/café.txt": Entry(True, "etag-text", 1, MTIME_NS, NEW),
        key: Entry(True, "etag-odd", 2, MTIME_NS, OLD),
    }
    ledger.reset_sequencers("m", "m/")
    assert ledger.get("m", key) == Entry(True, "etag-odd", 2, MTIME_NS, None)
    ledger.record_absent("m", key)
    assert ledger.get("m", key) == Entry(False, None, None, None, None)
    ledger.record_trigger_run("t", "v", key)
    ledger.forget("m", key)
    assert ledger.get("m", key) is None
    assert set(ledger.entries("m")) == {"m/café.txt"}


def test_entries_under_a_non_ascii_prefix(ledger: Ledger) -> None:
    ledger.record_present("m", "été/a", "e", 1, 1)
    ledger.record_present("m", "étés/b", "e", 1, 1)
    assert set(ledger.entries("m", "été/")) == {"été/a"}

"""ledger: the per-key SQLite state, on a real file under tmp_path."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from s3pull.ledger import Entry, Ledger

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

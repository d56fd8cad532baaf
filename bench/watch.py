"""When did a file appear? inotify, through ctypes.

The agent writes a temporary file and renames it over the target, so the moment a change
is applied is an ``IN_MOVED_TO`` event. Polling the directory would add its own interval
to every latency; watchfiles batches events. A thread reading the inotify descriptor
stamps each event within a fraction of a millisecond.
"""

from __future__ import annotations

import ctypes
import os
import select
import struct
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Final

__all__ = ["RenameWatcher"]

IN_MOVED_TO: Final = 0x00000080
EVENT_HEADER: Final = struct.Struct("iIII")  # wd, mask, cookie, len (struct inotify_event)

_libc = ctypes.CDLL(None, use_errno=True)


class RenameWatcher:
    """Timestamps of files renamed into watched directories (not recursive)."""

    def __init__(self) -> None:
        self._fd = _libc.inotify_init1(os.O_CLOEXEC | os.O_NONBLOCK)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self._directories: dict[int, Path] = {}
        self._times: defaultdict[Path, dict[str, list[float]]] = defaultdict(dict)
        self._counts: defaultdict[Path, list[float]] = defaultdict(list)
        self._changed = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._read, name="inotify", daemon=True)
        self._thread.start()

    def watch(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        wd = _libc.inotify_add_watch(self._fd, os.fsencode(directory), IN_MOVED_TO)
        if wd < 0:
            raise OSError(ctypes.get_errno(), "inotify_add_watch", str(directory))
        self._directories[wd] = directory

    def _read(self) -> None:
        while not self._stopping:
            ready, _, _ = select.select([self._fd], [], [], 0.2)
            if not ready:
                continue
            stamp = time.time()
            try:
                data = os.read(self._fd, 1 << 16)
            except BlockingIOError:
                continue
            events: list[tuple[Path, str]] = []
            offset = 0
            while offset < len(data):
                wd, _mask, _cookie, length = EVENT_HEADER.unpack_from(data, offset)
                offset += EVENT_HEADER.size
                name = data[offset : offset + length].rstrip(b"\0").decode()
                offset += length
                directory = self._directories.get(wd)
                if directory is not None:
                    events.append((directory, name))
            with self._changed:
                for directory, name in events:
                    self._times[directory].setdefault(name, []).append(stamp)
                    self._counts[directory].append(stamp)
                self._changed.notify_all()

    def renamed_at(self, directory: Path, name: str, since: float, timeout: float) -> float | None:
        """The first time ``name`` was renamed into ``directory`` at or after ``since``."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for stamp in self._times[directory].get(name, ()):
                    if stamp >= since:
                        return stamp
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._changed.wait(left)

    def nth_rename(self, directory: Path, count: int, timeout: float) -> float | None:
        """When the ``count``-th rename into ``directory`` happened (None on timeout)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self._counts[directory]) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._changed.wait(left)
            return self._counts[directory][count - 1]

    def renames(self, directory: Path) -> int:
        with self._changed:
            return len(self._counts[directory])

    def close(self) -> None:
        self._stopping = True
        self._thread.join()
        os.close(self._fd)

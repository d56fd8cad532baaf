"""A one-line progress bar for ``s3pull sync`` on a terminal."""

from __future__ import annotations

import time
from typing import TextIO

from s3pull.reconcile import Progress

__all__ = ["TerminalProgress"]

WIDTH = 30


def human_bytes(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


class TerminalProgress(Progress):
    """Redraws ``[#####     ] 120/1000 files  3.1/12.0 MiB`` in place, at most 10 times a second."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._files = self._bytes = self._done_files = self._done_bytes = 0
        self._drawn_at = 0.0

    def start(self, files: int, total_bytes: int) -> None:
        self._files, self._bytes = files, total_bytes
        self._draw()

    def advance(self, size: int) -> None:
        self._done_files += 1
        self._done_bytes += size
        if time.monotonic() - self._drawn_at >= 0.1 or self._done_files == self._files:
            self._draw()

    def finish(self) -> None:
        self._draw()
        self._stream.write("\n")
        self._stream.flush()

    def _draw(self) -> None:
        self._drawn_at = time.monotonic()
        fraction = self._done_files / self._files if self._files else 1.0
        filled = int(fraction * WIDTH)
        self._stream.write(
            f"\r[{'#' * filled}{' ' * (WIDTH - filled)}] {self._done_files}/{self._files} files"
            f"  {human_bytes(self._done_bytes)}/{human_bytes(self._bytes)}"
        )
        self._stream.flush()

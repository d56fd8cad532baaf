"""A one-line progress bar for ``s3pull sync`` on a terminal, and the log handler that
shares the terminal with it.

The bar lives on the last line and is redrawn in place with ``\\r``. A log line written
next to it would be glued to it (issue 16), so ``AboveTheBar`` clears the bar's line,
writes the record, and draws the bar again below it. The bar is fitted to the
terminal's width at every draw (a resized window included): a line that wraps can no
longer be redrawn in place.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Final, TextIO

from s3pull.reconcile import Progress

__all__ = ["AboveTheBar", "TerminalProgress", "human_bytes"]

WIDTH: Final = 30  # the bar itself, when the terminal has room
MIN_WIDTH: Final = 5  # narrower than this, only the counts are shown
CLEAR_LINE: Final = "\r\x1b[K"  # to the start of the line, then erase to its end


def human_bytes(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def terminal_columns(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns or 80
    except (OSError, ValueError):
        return 80


class TerminalProgress(Progress):
    """Redraws ``[#####     ] 120/1000 files  3.1/12.0 MiB`` in place, at most 10 times a
    second, never wider than the terminal."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._files = self._bytes = self._done_files = self._done_bytes = 0
        self._drawn_at = 0.0
        self._shown = False  # between start() and finish(): the bar holds the last line

    def start(self, files: int, total_bytes: int) -> None:
        self._files, self._bytes = files, total_bytes
        self._shown = True
        self._draw()

    def advance(self, size: int) -> None:
        self._done_files += 1
        self._done_bytes += size
        if time.monotonic() - self._drawn_at >= 0.1 or self._done_files == self._files:
            self._draw()

    def finish(self) -> None:
        if not self._shown:
            return
        self._draw()
        self._shown = False
        self._stream.write("\n")  # the bar stays, as the last state; logs go below it
        self._stream.flush()

    def clear(self) -> None:
        """Empty the bar's line for something else to be written there."""
        if self._shown:
            self._stream.write(CLEAR_LINE)

    def redraw(self) -> None:
        if self._shown:
            self._draw()

    def line(self, columns: int) -> str:
        """The bar as it fits in ``columns``, leaving the last column free: a character
        there makes some terminals wrap."""
        room = max(1, columns - 1)
        files = f"{self._done_files}/{self._files} files"
        counts = f"{files}  {human_bytes(self._done_bytes)}/{human_bytes(self._bytes)}"
        width = min(WIDTH, room - len(counts) - 3)  # "[", "] " around the bar
        if width < MIN_WIDTH:  # narrower: the bytes go next, then the end of the files
            return counts if len(counts) <= room else files[:room]
        fraction = self._done_files / self._files if self._files else 1.0
        filled = int(fraction * width)
        return f"[{'#' * filled}{' ' * (width - filled)}] {counts}"

    def _draw(self) -> None:
        self._drawn_at = time.monotonic()
        self._stream.write(CLEAR_LINE + self.line(terminal_columns(self._stream)))
        self._stream.flush()


class AboveTheBar(logging.StreamHandler[TextIO]):
    """A stream handler that writes each record above the progress bar."""

    def __init__(self, stream: TextIO, bar: TerminalProgress) -> None:
        super().__init__(stream)
        self._bar = bar

    def emit(self, record: logging.LogRecord) -> None:
        self._bar.clear()
        super().emit(record)
        self._bar.redraw()

"""Local file-system errors, said once per cause with a count instead of once per file.

An unwritable mirror directory fails every file below it the same way: one ERROR line
per file (1,211 in seconds, issue 16) buries the one thing an operator must read. Errors
are grouped by cause, (mirror, errno, the directory where the call failed): the first of
a cause is logged in full, the rest are counted and summed up in one line,
``data: ... and 1,210 more files under /srv/m/img: Permission denied``.

A reconcile calls ``flush()`` when it ends. The daemon's reporter has an ``interval``: a
cause still failing gets one summary line per interval, and its next error after a
quiet interval is logged in full again. Only the log is grouped: callers still count
every failure in status and metrics.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = ["DAEMON_INTERVAL", "Repeats"]

log = logging.getLogger(__name__)

# How often the daemon says that a cause is still failing: a cause failing every few
# seconds for an hour costs 60 lines, not thousands.
DAEMON_INTERVAL: Final = 60.0

Cause = tuple[str, int | None, str | None]  # (mirror, errno, directory)


@dataclass(slots=True)
class _Window:
    logger: logging.Logger
    reason: str
    failures: int = 0  # not logged yet
    files: set[str] = field(default_factory=set)  # their keys
    timer: asyncio.TimerHandle | None = None


def cause_of(where: str, exc: BaseException) -> Cause | None:
    """What groups ``exc`` with others like it, or None for an error said each time.

    Only local errors are grouped (an OSError naming a path, as ``paths`` makes them);
    an S3 error or one without a path is about one file, not a directory.
    """
    if not isinstance(exc, OSError) or exc.filename is None:
        return None
    path = os.fsdecode(exc.filename)
    if not os.path.isabs(path):
        return None
    # The directory an entry could not be made in, read from or removed from.
    return (where, exc.errno, os.path.dirname(path))


def _reason(exc: OSError) -> str:
    if exc.strerror:
        return exc.strerror
    return os.strerror(exc.errno) if exc.errno else (str(exc) or type(exc).__name__)


class Repeats:
    """Logs errors, grouping local ones by cause (see the module's docstring)."""

    def __init__(self, interval: float | None = None) -> None:
        self._interval = interval
        self._windows: dict[Cause, _Window] = {}

    def error(
        self,
        where: str,
        key: str,
        exc: BaseException,
        message: str,
        *args: Any,
        logger: logging.Logger = log,
        extra: dict[str, str] | None = None,
    ) -> None:
        """Log ``message % args`` at ERROR, unless ``exc`` has a cause already logged
        (then it is counted for the summary). ``where`` is the mirror (or trigger)."""
        cause = cause_of(where, exc)
        if cause is None:
            logger.error(message, *args, extra=extra)
            return
        window = self._windows.get(cause)
        if window is not None:
            window.failures += 1
            window.files.add(key)
            return
        logger.error(message, *args, extra=extra)
        assert isinstance(exc, OSError)
        window = self._windows[cause] = _Window(logger, _reason(exc))
        if self._interval is not None:
            window.timer = asyncio.get_running_loop().call_later(
                self._interval, self._interval_over, cause
            )

    def flush(self, where: str | None = None) -> None:
        """Say what was counted (for ``where`` only, if given), and start afresh: the
        next error of each cause is logged in full."""
        for cause in [c for c in self._windows if where is None or c[0] == where]:
            window = self._windows.pop(cause)
            if window.timer is not None:
                window.timer.cancel()
            self._summarize(cause, window)

    def _interval_over(self, cause: Cause) -> None:
        window = self._windows[cause]
        if not window.failures:  # quiet for a whole interval: the next one is news
            del self._windows[cause]
            return
        self._summarize(cause, window)
        window.failures = 0
        window.files = set()
        assert self._interval is not None
        window.timer = asyncio.get_running_loop().call_later(
            self._interval, self._interval_over, cause
        )

    def _summarize(self, cause: Cause, window: _Window) -> None:
        if not window.failures:
            return
        where, _errno, directory = cause
        files = len(window.files)
        if files == window.failures:
            counted = f"{files:,} more file{'' if files == 1 else 's'}"
        else:  # the daemon retries: one file may fail more than once
            counted = (
                f"{window.failures:,} more failure{'' if window.failures == 1 else 's'}"
                f" ({files:,} file{'' if files == 1 else 's'})"
            )
        window.logger.error("%s: ... and %s under %s: %s", where, counted, directory, window.reason)

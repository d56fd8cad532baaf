"""A mirror's ``on_change`` command: run once the mirror's changes settle.

Every file a mirror writes or deletes is ``note``d; ``run_forever`` waits until no change
has come for ``on_change_settle_seconds``, then runs the command once with the changed
paths on its standard input. One run at a time: changes made while it runs are kept for
one more run after it. A failure is logged and counted, never retried (the next change
runs it again), so a broken hook cannot stall the mirror.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Final, Literal, Protocol

from s3pull.command import clean_environment, run_command
from s3pull.config import MirrorConfig

__all__ = ["ON_CHANGE_TIMEOUT_SECONDS", "HookResult", "OnChange", "format_paths"]

log = logging.getLogger(__name__)

# A hook reloads a service or touches a file: seconds. One that hangs is stopped (its
# process group, like a trigger's) rather than holding back every later run.
ON_CHANGE_TIMEOUT_SECONDS: Final = 300.0

HookResult = Literal["succeeded", "failed", "timed-out"]

# Characters that make a path unsafe on a line of its own: C0 controls (newline first),
# DEL, and the quote and backslash of the quoting itself.
_ESCAPES: Final = {"\n": "\\n", "\r": "\\r", "\t": "\\t", '"': '\\"', "\\": "\\\\"}


class HookObserver(Protocol):
    def on_change_done(self, mirror: str, result: HookResult, paths: int) -> None: ...


def _quote(path: str) -> str:
    """A path as git shows it (core.quotePath, without the non-ASCII part): unchanged
    unless it holds a control character, '"' or '\\'; then in double quotes with C
    escapes, so every path is one line and a line starting with '"' is quoted."""
    if not any(c in _ESCAPES or ord(c) < 0x20 or ord(c) == 0x7F for c in path):
        return path
    escaped = "".join(
        _ESCAPES.get(c, f"\\{ord(c):03o}" if ord(c) < 0x20 or ord(c) == 0x7F else c) for c in path
    )
    return f'"{escaped}"'


def format_paths(paths: Iterable[Path]) -> bytes:
    """Absolute paths, sorted, one per line (quoted where needed): the hook's stdin.
    A name that is not UTF-8 is passed as the bytes it is."""
    lines = sorted(_quote(os.fsdecode(os.fspath(p))) for p in paths)
    return "".join(f"{line}\n" for line in lines).encode("utf-8", "surrogateescape")


class OnChange:
    """The ``on_change`` hook of one mirror, for one serve of the daemon."""

    def __init__(self, config: MirrorConfig, observer: HookObserver | None = None) -> None:
        self.config = config
        self._observer = observer
        self._pending: set[Path] = set()
        self._changed = asyncio.Event()

    def note(self, path: Path) -> None:
        """A file of the mirror was written or deleted (absolute path)."""
        self._pending.add(path)
        self._changed.set()

    async def run_forever(self) -> None:
        """Run the command after each settled group of changes, until cancelled. What is
        still pending when cancelled (the agent stopping) is logged and dropped."""
        try:
            while True:
                await self._changed.wait()
                await self._settle()
                paths, self._pending = self._pending, set()
                await self._run(paths)
        except asyncio.CancelledError:
            if self._pending:
                log.warning(
                    "%s: on_change not run for %d changed path(s): the agent is stopping",
                    self.config.name,
                    len(self._pending),
                )
            raise

    async def _settle(self) -> None:
        """Return once no change has come for the settle time."""
        while True:
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), self.config.on_change_settle_seconds)
            except TimeoutError:
                return

    async def _run(self, paths: set[Path]) -> None:
        name = self.config.name
        tag = f"{name} on_change"
        env = clean_environment(
            {"S3PULL_MIRROR": name, "S3PULL_MIRROR_DIR": str(self.config.directory)}
        )
        started = time.monotonic()
        log.info("%s: running on_change for %d changed path(s)", name, len(paths))
        result: HookResult
        try:
            code = await run_command(
                self.config.on_change,
                self.config.directory,
                env,
                ON_CHANGE_TIMEOUT_SECONDS,
                tag,
                stdin=format_paths(paths),
            )
        except TimeoutError:
            result, detail = "timed-out", f"timed out after {ON_CHANGE_TIMEOUT_SECONDS:.0f} s"
        except OSError as exc:  # not found, not executable, the directory gone
            result, detail = "failed", f"could not start: {exc}"
        else:
            result = "succeeded" if code == 0 else "failed"
            detail = f"exit status {code}"
        seconds = time.monotonic() - started
        if result == "succeeded":
            log.info("%s: on_change succeeded (%d path(s), %.1f s)", name, len(paths), seconds)
        else:
            log.error(
                "%s: on_change %s: %s; not retried, the next change runs it again",
                name,
                result,
                detail,
            )
        if self._observer is not None:
            self._observer.on_change_done(name, result, len(paths))

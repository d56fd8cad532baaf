"""Error types shared by every module. A leaf: imports nothing of ours."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

__all__ = [
    "ConfigError",
    "LedgerBusy",
    "LedgerUnavailable",
    "PathCollision",
    "S3PullError",
    "StateDirectoryBusy",
    "UnparseableBody",
    "UnsafeKey",
]


class S3PullError(Exception):
    """Base class of every error s3pull raises on purpose."""


class ConfigError(S3PullError):
    """The configuration is invalid. The message names the file, the key and the problem."""

    def __init__(self, path: str, key: str, problem: str) -> None:
        self.path = path
        self.key = key
        self.problem = problem
        where = f"{path}: {key}" if key else path
        super().__init__(f"{where}: {problem}")


class UnsafeKey(S3PullError):
    """An S3 key that must never be written to disk (traversal, NUL, symlink, collision...)."""

    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        self.reason = reason
        # Real keys are at most 1,024 bytes; a forged one must not flood the log.
        self.shown = repr(key) if len(key) <= 300 else f"{key[:300]!r}... ({len(key)} characters)"
        super().__init__(f"refused key {self.shown}: {reason}")


class PathCollision(UnsafeKey):
    """A file stands where a directory must go, or a directory where a file must go.

    Legal in S3 (``a`` and ``a/b``), impossible on a disk. ``blocker`` is the path (parts
    relative to the directory) of what is in the way; whether this is final depends on
    whether S3 still holds the blocker, which only the caller can ask.
    """

    def __init__(self, key: str, reason: str, blocker: tuple[str, ...], is_directory: bool):
        super().__init__(key, reason)
        self.blocker = blocker
        self.blocker_is_directory = is_directory


class UnparseableBody(S3PullError):
    """An SQS message body that is not an S3 notification we can read."""


class LedgerBusy(S3PullError, OSError):
    """Another process holds the ledger's write lock: try again later.

    An OSError (EBUSY, "resource busy"), because that is what it is: a local resource
    briefly unavailable. Every caller already treats OSError as transient (a message is
    handed back, a start-up reconcile retried), and none of them waits for it.
    """


class LedgerUnavailable(S3PullError, OSError):
    """The ledger cannot be read or written (disk full, an I/O error, a read-only file):
    a local fault, handled like any other OSError (the change is handed back, a
    reconcile retried), never one that stops the daemon."""


class StateDirectoryBusy(Exception):
    """Another s3pull process holds the state directory (``status.claim_state_directory``)."""

    def __init__(self, directory: Path, holder: str) -> None:
        super().__init__(f"another s3pull ({holder}) is running on the state directory {directory}")
        self.holder = holder

"""Structured log fields: what journald indexes besides the message."""

from __future__ import annotations

from typing import Final

__all__ = ["SUMMARY", "journal_fields"]


def journal_fields(**fields: str) -> dict[str, str]:
    """``extra=`` for a log call: structured journald fields (S3PULL_MIRROR, ...).

    The journal handler set up in ``cli`` sends every ``S3PULL_*`` attribute of a record
    as a field of its own, so ``journalctl S3PULL_MIRROR=assets`` finds a mirror's lines.
    """
    return {f"S3PULL_{name.upper()}": value for name, value in fields.items()}


# ``extra=`` for a summary line (a reconcile's totals, the daemon's last words): what
# ``--quiet`` still shows besides errors, and ``journalctl S3PULL_SUMMARY=1`` lists.
SUMMARY: Final = journal_fields(summary="1")

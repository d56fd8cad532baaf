"""Structured log fields: what journald indexes besides the message."""

from __future__ import annotations

__all__ = ["journal_fields"]


def journal_fields(**fields: str) -> dict[str, str]:
    """``extra=`` for a log call: structured journald fields (S3PULL_MIRROR, ...).

    The journal handler set up in ``cli`` sends every ``S3PULL_*`` attribute of a record
    as a field of its own, so ``journalctl S3PULL_MIRROR=assets`` finds a mirror's lines.
    """
    return {f"S3PULL_{name.upper()}": value for name, value in fields.items()}

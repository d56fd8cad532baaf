"""Untrusted text in log lines and status output: one event, one line.

S3 keys may hold any character, newlines included, and trigger commands print what they
like. Written as is, a key ending in ``\\nERROR m: deleted data/index.html`` forges a
second log line, a ``\\r`` or an escape sequence rewrites the line on a terminal. So every
control character (C0, DEL, C1) and the Unicode line and paragraph separators are shown
escaped, as Python writes them in a string literal: ``\\n``, ``\\r``, ``\\t``, ``\\x1b``,
``\\u2028``. A backslash is left as it is: ``a\\nb`` may then be either key, but no key can
start a line of its own.
"""

from __future__ import annotations

import logging
from typing import Any, Final

__all__ = ["EscapingFormatter", "escape_controls", "escape_strings"]


def _escape(code: int) -> str:
    named = {0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r"}
    if code in named:
        return named[code]
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


_CONTROLS: Final = [*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0), 0x2028, 0x2029]
_TABLE: Final = {code: _escape(code) for code in _CONTROLS}


def escape_controls(text: str) -> str:
    """``text`` with every control character and line separator escaped."""
    return text.translate(_TABLE)


def escape_strings(value: Any) -> Any:
    """A copy of JSON-like ``value`` (dicts, lists, strings...) with every string escaped:
    for printing what the daemon recorded (status.json) as text."""
    if isinstance(value, str):
        return escape_controls(value)
    if isinstance(value, dict):
        return {escape_strings(k): escape_strings(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [escape_strings(item) for item in value]
    return value


class EscapingFormatter(logging.Formatter):
    """Formats a record as usual, then escapes what would break it over several lines:
    the message (keys, command output, error texts) and a traceback alike. Only the text
    written is escaped; the record and its ``extra`` fields (journald's ``S3PULL_KEY``)
    keep their values."""

    def format(self, record: logging.LogRecord) -> str:
        return escape_controls(super().format(record))

"""The state an agent publishes on its own queue's tags, and how it is read back.

SQS tags are the one place every server already may write (its own queue) and an
operator already may read (``gc`` lists them): no bucket, table or extra permission. A
queue takes 50 tags; s3pull uses six. A tag value holds at most 256 characters, and only
letters, digits, spaces and ``_ . : / = + - @`` (SQS quotas, "Queue tags"): any other
character, control characters included, is written as ``=XX`` per UTF-8 byte (``=`` itself
as ``=3D``), and a long error is cut, never a sequence split. ``decode_value`` undoes it;
what it returns is still untrusted text (anyone with TagQueue rights on the queue wrote
it) and is shown escaped.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from s3pull.logsafe import escape_controls
from s3pull.provision import HEARTBEAT_TAG, INSTANCE_TAG

__all__ = [
    "APPLIED_THROUGH_TAG",
    "ERROR_TAG",
    "MAX_VALUE",
    "PHASE_TAG",
    "VERSION_TAG",
    "AgentState",
    "decode_value",
    "encode_value",
    "format_time",
    "parse_time",
]

VERSION_TAG: Final = "s3pull:version"
PHASE_TAG: Final = "s3pull:phase"
APPLIED_THROUGH_TAG: Final = "s3pull:applied-through"
ERROR_TAG: Final = "s3pull:last-error"
MAX_VALUE: Final = 256
UNKNOWN: Final = "unknown"  # values are never empty: not every SQS document allows it
NONE: Final = "none"
_PLAIN: Final = frozenset(string.ascii_letters + string.digits + " _.:/+-@")
_CUT: Final = " ..."


def encode_value(text: str) -> str:
    """``text`` as a valid SQS tag value: escaped, then encoded, then cut to fit."""
    out: list[str] = []
    length = 0
    for char in escape_controls(text):
        piece = (
            char
            if char in _PLAIN
            else "".join(f"={byte:02X}" for byte in char.encode("utf-8", "replace"))
        )
        if length + len(piece) > MAX_VALUE - len(_CUT):
            out.append(_CUT)
            break
        out.append(piece)
        length += len(piece)
    return "".join(out)


def decode_value(value: str) -> str:
    """The text ``encode_value`` was given (escaped control characters stay escaped)."""
    raw = bytearray()
    index = 0
    while index < len(value):
        chunk = value[index : index + 3]
        if chunk[:1] == "=" and len(chunk) == 3 and all(c in string.hexdigits for c in chunk[1:]):
            raw.append(int(chunk[1:], 16))
            index += 3
        else:
            raw.extend(value[index].encode())
            index += 1
    return raw.decode("utf-8", "replace")


def format_time(seconds: float) -> str:
    """Unix time -> ``2026-12-02T07:01:02.345Z`` (only tag-safe characters)."""
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_time(value: str | None) -> datetime | None:
    if not value or value in (UNKNOWN, NONE):
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class AgentState:
    """What one agent says about itself. Times are aware UTC datetimes."""

    instance_id: str
    version: str | None
    phase: str | None
    applied_through: datetime | None
    last_error: str | None
    heartbeat: datetime | None

    def tags(self) -> dict[str, str]:
        """Everything but the instance tag (set when the queue is made)."""
        return {
            VERSION_TAG: encode_value(self.version or UNKNOWN),
            PHASE_TAG: encode_value(self.phase or UNKNOWN),
            APPLIED_THROUGH_TAG: (
                format_time(self.applied_through.timestamp()) if self.applied_through else UNKNOWN
            ),
            ERROR_TAG: encode_value(self.last_error) if self.last_error else NONE,
            # The format gc has always read.
            HEARTBEAT_TAG: (self.heartbeat or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> AgentState:
        def text(key: str) -> str | None:
            value = tags.get(key)
            return None if value in (None, UNKNOWN, NONE) else decode_value(value)

        return cls(
            instance_id=tags.get(INSTANCE_TAG, ""),
            version=text(VERSION_TAG),
            phase=text(PHASE_TAG),
            applied_through=parse_time(tags.get(APPLIED_THROUGH_TAG)),
            last_error=text(ERROR_TAG),
            heartbeat=parse_time(tags.get(HEARTBEAT_TAG)),
        )

"""SQS message body -> S3 change records.

Pure: no I/O, no logging. Three explicit steps, in the order the layers were put on:

1. unwrap the SNS envelope when there is one (raw message delivery sends the S3 JSON itself);
2. read the S3 document: an ``s3:TestEvent`` or a list of ``Records``;
3. turn each record into a frozen :class:`ObjectChange`, decoding the key exactly once.

Every shape and field used here is documented in the Amazon S3 User Guide, "Event message
structure" (notification-content-structure.html) and "Supported event types"
(notification-how-to-event-types-and-destinations.html).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote_plus

from s3pull.errors import UnparseableBody

__all__ = [
    "ChangeKind",
    "Notification",
    "ObjectChange",
    "parse_body",
    "sequencer_newer",
]

ChangeKind = Literal["created", "removed"]


@dataclass(frozen=True, slots=True)
class ObjectChange:
    """One object created or removed, as an S3 event notification reported it."""

    kind: ChangeKind
    event_name: str
    bucket: str
    key: str
    event_time: str
    size: int | None = None
    etag: str | None = None
    version_id: str | None = None
    sequencer: str | None = None


@dataclass(frozen=True, slots=True)
class Notification:
    """Everything one SQS message body said.

    ``changes`` keeps record order; ``ignored`` holds the ``eventName`` of well-formed records
    we do not act on, so the caller can log them; ``test_event`` is set for ``s3:TestEvent``.
    """

    changes: tuple[ObjectChange, ...]
    test_event: bool = False
    ignored: tuple[str, ...] = ()


# "Supported event types": the event name's family decides what happened to the object.
# Lifecycle deletes arrive only as LifecycleExpiration:Delete / :DeleteMarkerCreated, never
# as ObjectRemoved, and ObjectRemoved:DeleteMarkerCreated means the current version is gone.
# Everything else (ObjectRestore:*, ObjectTagging:*, ObjectAcl:Put, Replication:*,
# LifecycleTransition, IntelligentTiering, ReducedRedundancyLostObject...) leaves the
# object's content where it was, so it is reported as ignored.
_KIND_BY_FAMILY: dict[str, ChangeKind] = {
    "ObjectCreated": "created",
    "ObjectRemoved": "removed",
    "LifecycleExpiration": "removed",
}

_TEST_EVENT = "s3:TestEvent"

# "Event message structure": eventVersion is <major>.<minor>; the major changes only when
# the structure changes incompatibly, a minor adds fields (which we ignore). S3 has sent
# 2.1, 2.2 and 2.3 per event type and, since 2.4, one version for every type.
_EVENT_VERSION = re.compile(r"2\.[0-9]+")

# "Event message structure": the sequencer is "a string representation of a hexadecimal
# value"; PUT and DELETE events carry one.
_HEX = re.compile(r"[0-9A-Fa-f]+")


def parse_body(body: str) -> Notification:
    """Parse one SQS message body (SNS-wrapped or raw S3 JSON).

    Raises UnparseableBody when any part of it is not what S3 and SNS send. One bad record
    spoils the whole body: the message is then left to reach the dead-letter queue, where
    the evidence stays.
    """
    document = _unwrap_envelope(_load_object(body, "body"))
    if document.get("Event") == _TEST_EVENT:
        # Sent once when a notification configuration is saved; it names no object.
        return Notification(changes=(), test_event=True)

    changes: list[ObjectChange] = []
    ignored: list[str] = []
    for index, record in enumerate(_read_records(document)):
        event_name, change = _to_change(record, f"Records[{index}]")
        if change is None:
            ignored.append(event_name)
        else:
            changes.append(change)
    return Notification(changes=tuple(changes), ignored=tuple(ignored))


def sequencer_newer(candidate: str, current: str) -> bool:
    """True when ``candidate`` is strictly newer than ``current``.

    Both must be sequencers of events on the same key (S3 gives no order across keys).
    Per "Event message structure", they are compared as hex strings after right-padding the
    shorter one with zeros; equal after padding means the same event, so not newer.
    Raises ValueError when either is not a hex string.
    """
    for name, value in (("candidate", candidate), ("current", current)):
        if not _HEX.fullmatch(value):
            raise ValueError(f"{name} sequencer is not a hex string: {_show(value)}")
    width = max(len(candidate), len(current))
    # Same width, same case: string order is numeric order for hex digits.
    return candidate.upper().ljust(width, "0") > current.upper().ljust(width, "0")


# Step 1: the SNS envelope.


def _unwrap_envelope(document: dict[str, object]) -> dict[str, object]:
    """Return the S3 document, out of its SNS envelope when it came in one.

    Without raw message delivery, SNS puts the S3 JSON, as a string, in ``Message`` of an
    envelope whose ``Type`` is ``Notification`` (SNS Developer Guide, "Amazon SNS message
    and JSON formats").
    """
    if document.get("Type") != "Notification":
        return document
    message = document.get("Message")
    if not isinstance(message, str):
        raise UnparseableBody(f"SNS Message: expected a string, got {_type_name(message)}")
    return _load_object(message, "SNS Message")


# Step 2: the S3 document.


def _read_records(document: dict[str, object]) -> list[object]:
    records = document.get("Records")
    if not isinstance(records, list):
        raise UnparseableBody(f"Records: expected a list, got {_type_name(records)}")
    return records


# Step 3: one record.


def _to_change(record: object, where: str) -> tuple[str, ObjectChange | None]:
    """Validate one record; return its eventName and the change (None when not acted on).

    Records we do not act on are validated too: "well-formed" is the same rule for all.
    """
    fields = _as_object(record, where)
    event_name = _required_str(fields, "eventName", where)
    version = _required_str(fields, "eventVersion", where)
    if not _EVENT_VERSION.fullmatch(version):
        raise UnparseableBody(f"{where}.eventVersion: {_show(version)} is not 2.x")
    event_time = _required_str(fields, "eventTime", where)

    s3 = _required_object(fields, "s3", where)
    bucket = _required_object(s3, "bucket", f"{where}.s3")
    obj = _required_object(s3, "object", f"{where}.s3")
    where_object = f"{where}.s3.object"
    bucket_name = _required_str(bucket, "name", f"{where}.s3.bucket")
    key = _decode_key(_required_str(obj, "key", where_object), f"{where_object}.key")
    size = _optional_int(obj, "size", where_object)
    etag = _optional_str(obj, "eTag", where_object)
    version_id = _optional_str(obj, "versionId", where_object)
    sequencer = _optional_str(obj, "sequencer", where_object)
    if sequencer is not None and not _HEX.fullmatch(sequencer):
        raise UnparseableBody(f"{where_object}.sequencer: {_show(sequencer)} is not hexadecimal")

    kind = _KIND_BY_FAMILY.get(event_name.partition(":")[0])
    if kind is None:
        return event_name, None
    change = ObjectChange(
        kind=kind,
        event_name=event_name,
        bucket=bucket_name,
        key=key,
        event_time=event_time,
        size=size,
        etag=_strip_quotes(etag),
        version_id=version_id,
        sequencer=sequencer,
    )
    return event_name, change


def _decode_key(encoded: str, where: str) -> str:
    """Decode the key exactly once.

    "Event message structure": the key is URL-encoded, a space as '+'. moto also encodes
    '/' as %2F; unquote_plus undoes both. Decoding again would turn a literal '%41' in a
    key into 'A'. S3 keys are UTF-8, so bytes that are not UTF-8 mean a broken body rather
    than a key to replace with U+FFFD and then fail to find.
    """
    try:
        key = unquote_plus(encoded, errors="strict")
        key.encode("utf-8")  # a lone surrogate (JSON \ud800) is no S3 key
    except (UnicodeDecodeError, UnicodeEncodeError) as exc:
        raise UnparseableBody(f"{where}: not UTF-8 once decoded ({exc.reason})") from None
    if not key:
        raise UnparseableBody(f"{where}: empty")
    return key


def _strip_quotes(etag: str | None) -> str | None:
    # S3 sends the eTag bare in events but quoted in HTTP headers; keep the bare form.
    if etag is not None and len(etag) >= 2 and etag[0] == etag[-1] == '"':
        etag = etag[1:-1]
    return etag or None


# Typed field access. Each error names the field's path in the document (never its
# content beyond the offending value's type), so a log line shows what was wrong.


def _load_object(text: str, where: str) -> dict[str, object]:
    try:
        value: object = json.loads(text)
    except ValueError as exc:  # json.JSONDecodeError
        raise UnparseableBody(f"{where}: not JSON ({exc})") from None
    except RecursionError:
        raise UnparseableBody(f"{where}: nested too deeply") from None
    return _as_object(value, where)


def _as_object(value: object, where: str) -> dict[str, object]:
    if not isinstance(value, dict):
        raise UnparseableBody(f"{where}: expected an object, got {_type_name(value)}")
    return value


def _required_object(fields: dict[str, object], name: str, where: str) -> dict[str, object]:
    if name not in fields:
        raise UnparseableBody(f"{where}.{name}: missing")
    return _as_object(fields[name], f"{where}.{name}")


def _required_str(fields: dict[str, object], name: str, where: str) -> str:
    value = fields.get(name)
    if value is None:
        raise UnparseableBody(f"{where}.{name}: missing")
    if not isinstance(value, str):
        raise UnparseableBody(f"{where}.{name}: expected a string, got {_type_name(value)}")
    if not value:
        raise UnparseableBody(f"{where}.{name}: empty")
    return value


def _optional_str(fields: dict[str, object], name: str, where: str) -> str | None:
    # Absent, null ("versionId ... otherwise null" in the AWS sample) and "" all mean the
    # same thing to us: S3 told us nothing.
    value = fields.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise UnparseableBody(f"{where}.{name}: expected a string, got {_type_name(value)}")
    return value


def _optional_int(fields: dict[str, object], name: str, where: str) -> int | None:
    value = fields.get(name)
    if value is None:
        return None
    # bool is an int subclass in Python; true is no size.
    if not isinstance(value, int) or isinstance(value, bool):
        raise UnparseableBody(f"{where}.{name}: expected an integer, got {_type_name(value)}")
    if value < 0:
        raise UnparseableBody(f"{where}.{name}: negative ({value})")
    return value


def _show(text: str) -> str:
    # Values from the body go into log lines: keep them short.
    return repr(text if len(text) <= 40 else text[:40] + "...")


def _type_name(value: object) -> str:
    # JSON names, since that is what the reader of the log line is looking at.
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__

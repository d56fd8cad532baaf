"""SQS message body -> S3 change records.

Pure: no I/O, no logging. Three explicit steps, in the order the layers were put on:

1. unwrap the SNS envelope when there is one (raw message delivery sends the S3 JSON itself);
2. read the S3 document: an ``s3:TestEvent``, a list of ``Records``, or one EventBridge event
   (``detail-type``, ``source``, ``detail``: what an EventBridge rule delivers, straight to
   the queue or through the SNS topic);
3. turn each record into a frozen :class:`ObjectChange`, decoding the key exactly once
   (an EventBridge ``detail.object.key`` is not URL-encoded: it is taken as it is).

Every field passed on is checked for the shape S3 gives it (event time, bucket, ETag,
version id, sequencer, event name and source): they reach log lines, the ledger and a
trigger command's environment. The key is the exception: S3 keys may hold any character,
control characters included, and ``paths.safe_parts`` decides what may be written.
Where a message came from (its topic, its ``eventSource``, its bucket) is reported here
and judged by ``sources.Trust``, which knows the configuration.

Every shape and field used here is documented in the Amazon S3 User Guide, "Event message
structure" (notification-content-structure.html) and "Supported event types"
(notification-how-to-event-types-and-destinations.html); the EventBridge shapes in
"EventBridge event message structure" (ev-events.html) and "Using EventBridge"
(EventBridge.html).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Literal
from urllib.parse import unquote_plus

from s3pull.errors import UnparseableBody

__all__ = [
    "EVENTBRIDGE_SOURCE",
    "ChangeKind",
    "Notification",
    "ObjectChange",
    "parse_body",
    "sequencer_newer",
]

# "restored": an archived object's temporary copy is readable now (ObjectRestore:Completed,
# EventBridge "Object Restore Completed"); fetched like a created object, never a new version.
ChangeKind = Literal["created", "removed", "restored"]

# "EventBridge event message structure": source is "aws.s3" (notifications say "aws:s3").
EVENTBRIDGE_SOURCE = "aws.s3"


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
    event_source: str = "aws:s3"  # the record's eventSource, judged by sources.Trust
    # How S3 sent it: a bucket notification, or an EventBridge event (its "source" is then
    # in event_source, and must be "aws.s3").
    delivery: Literal["notification", "eventbridge"] = "notification"


@dataclass(frozen=True, slots=True)
class Notification:
    """Everything one SQS message body said.

    ``changes`` keeps record order; ``ignored`` holds the ``eventName`` of well-formed records
    we do not act on, so the caller can log them; ``test_event`` is set for ``s3:TestEvent``;
    ``topic_arn`` is the SNS envelope's topic, None for a raw-delivery body (no envelope).
    """

    changes: tuple[ObjectChange, ...]
    test_event: bool = False
    ignored: tuple[str, ...] = ()
    topic_arn: str | None = None


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
# Only the completed restore makes an archived object readable; ObjectRestore:Post (asked)
# and ObjectRestore:Delete (the temporary copy expired) change nothing we could fetch.
_KIND_BY_NAME: dict[str, ChangeKind] = {"ObjectRestore:Completed": "restored"}

_TEST_EVENT = "s3:TestEvent"

# "Event message structure": eventVersion is <major>.<minor>; the major changes only when
# the structure changes incompatibly, a minor adds fields (which we ignore). S3 has sent
# 2.1, 2.2 and 2.3 per event type and, since 2.4, one version for every type.
_EVENT_VERSION = re.compile(r"2\.[0-9]+")

# "Event message structure": the sequencer is "a string representation of a hexadecimal
# value"; PUT and DELETE events carry one.
_HEX = re.compile(r"[0-9A-Fa-f]+")

# The shapes of the other fields passed on. ASCII classes only: re's \d would take any
# Unicode digit.
# "eventTime": ISO 8601 in UTC, as S3 sends it (2026-11-29T10:15:30.123Z); moto and
# LocalStack send the same form. Up to nanoseconds, 'Z' or '+00:00'.
_EVENT_TIME = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})"
    r"(?:\.[0-9]{1,9})?(?:Z|\+00:00)"
)
# Bucket naming rules, widened to the legacy us-east-1 names S3 still holds (capitals,
# '_', up to 255 characters): such a name is a valid bucket, just never a configured one.
_BUCKET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{2,254}")
# An MD5 in hex, or for multipart uploads the MD5 of the parts' MD5s, '-' and their count.
_ETAG = re.compile(r"[0-9A-Fa-f]+(?:-[0-9]+)?")
# Version ids are URL-safe printable ASCII ("null" for an unversioned object).
_VERSION_ID = re.compile(r"[!-~]{1,1024}")
# "ObjectCreated:Put", "LifecycleTransition", "Replication:OperationFailedReplication"...
_EVENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9:._-]{0,127}")
# "aws:s3" from S3; anything else of this shape is well-formed and refused by Trust.
_EVENT_SOURCE = re.compile(r"[A-Za-z0-9][A-Za-z0-9:._-]{0,127}")
# SNS TopicArn (arn:PARTITION:sns:REGION:ACCOUNT:NAME, ".fifo" for FIFO topics).
_TOPIC_ARN = re.compile(r"arn:aws[a-z-]*:sns:[a-z0-9-]+:[0-9]{12}:[A-Za-z0-9_-]{1,256}(\.fifo)?")


def parse_body(body: str) -> Notification:
    """Parse one SQS message body (SNS-wrapped or raw S3 JSON).

    Raises UnparseableBody when any part of it is not what S3 and SNS send. One bad record
    spoils the whole body: the message is then left to reach the dead-letter queue, where
    the evidence stays.
    """
    topic_arn, document = _unwrap_envelope(_load_object(body, "body"))
    if "detail-type" in document:
        return _eventbridge(document, topic_arn)
    if document.get("Event") == _TEST_EVENT:
        # Sent once when a notification configuration is saved; it names no object.
        return Notification(changes=(), test_event=True, topic_arn=topic_arn)

    changes: list[ObjectChange] = []
    ignored: list[str] = []
    for index, record in enumerate(_read_records(document)):
        event_name, change = _to_change(record, f"Records[{index}]")
        if change is None:
            ignored.append(event_name)
        else:
            changes.append(change)
    return Notification(changes=tuple(changes), ignored=tuple(ignored), topic_arn=topic_arn)


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


def _unwrap_envelope(document: dict[str, object]) -> tuple[str | None, dict[str, object]]:
    """Return the envelope's topic (None without one) and the S3 document.

    Without raw message delivery, SNS puts the S3 JSON, as a string, in ``Message`` of an
    envelope whose ``Type`` is ``Notification``, and names the topic in ``TopicArn``
    (SNS Developer Guide, "Amazon SNS message and JSON formats").
    """
    if document.get("Type") != "Notification":
        return None, document
    topic_arn = _required_str(document, "TopicArn", "SNS")
    if not _TOPIC_ARN.fullmatch(topic_arn):
        raise UnparseableBody(f"SNS.TopicArn: {_show(topic_arn)} is not an SNS topic ARN")
    message = document.get("Message")
    if not isinstance(message, str):
        raise UnparseableBody(f"SNS Message: expected a string, got {_type_name(message)}")
    return topic_arn, _load_object(message, "SNS Message")


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
    event_name = _shaped(
        _required_str(fields, "eventName", where), _EVENT_NAME, f"{where}.eventName"
    )
    version = _required_str(fields, "eventVersion", where)
    if not _EVENT_VERSION.fullmatch(version):
        raise UnparseableBody(f"{where}.eventVersion: {_show(version)} is not 2.x")
    event_source = _shaped(
        _required_str(fields, "eventSource", where), _EVENT_SOURCE, f"{where}.eventSource"
    )
    event_time = _event_time(_required_str(fields, "eventTime", where), f"{where}.eventTime")

    s3 = _required_object(fields, "s3", where)
    bucket = _required_object(s3, "bucket", f"{where}.s3")
    obj = _required_object(s3, "object", f"{where}.s3")
    where_object = f"{where}.s3.object"
    where_bucket = f"{where}.s3.bucket.name"
    bucket_name = _shaped(
        _required_str(bucket, "name", f"{where}.s3.bucket"), _BUCKET, where_bucket
    )
    key = _decode_key(_required_str(obj, "key", where_object), f"{where_object}.key")
    size, etag, version_id, sequencer = _object_fields(obj, where_object, "eTag", "versionId")

    kind = _KIND_BY_NAME.get(event_name) or _KIND_BY_FAMILY.get(event_name.partition(":")[0])
    if kind is None:
        return event_name, None
    change = ObjectChange(
        kind=kind,
        event_name=event_name,
        bucket=bucket_name,
        key=key,
        event_time=event_time,
        size=size,
        etag=etag,
        version_id=version_id,
        sequencer=sequencer,
        event_source=event_source,
    )
    return event_name, change


# The EventBridge path: one event per body, no Records.

# "Using EventBridge": the detail-types that change what a mirror holds, and the S3
# notification event name each one is (by its "reason" and "deletion-type"), so log lines,
# `dlq list` and the counters read the same whichever way S3 sent the event.
_EB_CREATED: dict[str, str] = {
    "PutObject": "ObjectCreated:Put",
    "POST Object": "ObjectCreated:Post",
    "CopyObject": "ObjectCreated:Copy",
    "CompleteMultipartUpload": "ObjectCreated:CompleteMultipartUpload",
}
_EB_DELETED_FAMILY: dict[str, str] = {
    "DeleteObject": "ObjectRemoved",
    "Lifecycle Expiration": "LifecycleExpiration",
}
_EB_DELETION_TYPE: dict[str, str] = {
    "Permanently Deleted": "Delete",
    "Delete Marker Created": "DeleteMarkerCreated",
}


def _eventbridge(event: dict[str, object], topic_arn: str | None) -> Notification:
    """One EventBridge event -> at most one change.

    Every detail-type is validated alike; only "Object Created", "Object Deleted" and
    "Object Restore Completed" become changes, the others (tags, ACLs, storage class,
    restore initiated or expired...) are reported as ignored. The key is not URL-encoded.
    """
    where = "event"
    detail_type = _required_str(event, "detail-type", where)
    if len(detail_type) > 128 or not detail_type.isprintable():
        raise UnparseableBody(f"{where}.detail-type: {_show(detail_type)} is not what S3 sends")
    source = _shaped(_required_str(event, "source", where), _EVENT_SOURCE, f"{where}.source")
    event_time = _event_time(_required_str(event, "time", where), f"{where}.time")
    detail = _required_object(event, "detail", where)
    bucket = _required_object(detail, "bucket", f"{where}.detail")
    bucket_name = _shaped(
        _required_str(bucket, "name", f"{where}.detail.bucket"),
        _BUCKET,
        f"{where}.detail.bucket.name",
    )
    # "resources" holds the bucket's ARN: one that names another bucket is a forgery or a
    # broken body, not an event for either.
    resources = event.get("resources", [])
    if not isinstance(resources, list):
        raise UnparseableBody(f"{where}.resources: expected an array, got {_type_name(resources)}")
    arns = [r for r in resources if isinstance(r, str) and r.startswith("arn:aws")]
    if arns and not any(r.endswith(f":s3:::{bucket_name}") for r in arns):
        raise UnparseableBody(
            f"{where}.resources: names no bucket {bucket_name!r} (detail.bucket.name)"
        )
    where_object = f"{where}.detail.object"
    obj = _required_object(detail, "object", f"{where}.detail")
    key = _raw_key(_required_str(obj, "key", where_object), f"{where_object}.key")
    size, etag, version_id, sequencer = _object_fields(obj, where_object, "etag", "version-id")

    kind: ChangeKind
    if detail_type == "Object Created":
        kind = "created"
        reason = _optional_str(detail, "reason", f"{where}.detail") or ""
        event_name = _EB_CREATED.get(reason, "ObjectCreated:*")
    elif detail_type == "Object Deleted":
        kind = "removed"
        reason = _optional_str(detail, "reason", f"{where}.detail") or ""
        deletion = _optional_str(detail, "deletion-type", f"{where}.detail") or ""
        family = _EB_DELETED_FAMILY.get(reason, "ObjectRemoved")
        event_name = f"{family}:{_EB_DELETION_TYPE.get(deletion, 'Delete')}"
    elif detail_type == "Object Restore Completed":
        kind, event_name = "restored", "ObjectRestore:Completed"
    else:
        return Notification(changes=(), ignored=(detail_type,), topic_arn=topic_arn)
    change = ObjectChange(
        kind=kind,
        event_name=event_name,
        bucket=bucket_name,
        key=key,
        event_time=event_time,
        size=size,
        etag=etag,
        version_id=version_id,
        sequencer=sequencer,
        event_source=source,
        delivery="eventbridge",
    )
    return Notification(changes=(change,), topic_arn=topic_arn)


def _object_fields(
    obj: dict[str, object], where: str, etag_name: str, version_name: str
) -> tuple[int | None, str | None, str | None, str | None]:
    """Size, ETag, version id and sequencer of an event's object, each checked for the
    shape S3 gives it. Notifications and EventBridge name two of them differently."""
    size = _optional_int(obj, "size", where)
    etag = _strip_quotes(_optional_str(obj, etag_name, where))
    if etag is not None:
        _shaped(etag, _ETAG, f"{where}.{etag_name}")
    version_id = _optional_str(obj, version_name, where)
    if version_id is not None:
        _shaped(version_id, _VERSION_ID, f"{where}.{version_name}")
    sequencer = _optional_str(obj, "sequencer", where)
    if sequencer is not None and not _HEX.fullmatch(sequencer):
        raise UnparseableBody(f"{where}.sequencer: {_show(sequencer)} is not hexadecimal")
    return size, etag, version_id, sequencer


def _raw_key(key: str, where: str) -> str:
    """An EventBridge key as sent: not URL-encoded, so never decoded ("a+b" is a plus)."""
    try:
        key.encode("utf-8")  # a lone surrogate (JSON \ud800) is no S3 key
    except UnicodeEncodeError as exc:
        raise UnparseableBody(f"{where}: not UTF-8 ({exc.reason})") from None
    return key


def _shaped(value: str, shape: re.Pattern[str], where: str) -> str:
    if not shape.fullmatch(value):
        raise UnparseableBody(f"{where}: {_show(value)} is not what S3 sends")
    return value


def _event_time(value: str, where: str) -> str:
    """Check that ``value`` is an ISO 8601 UTC time that exists; return it unchanged.

    It is passed on as it came (a trigger command sees it as ``S3PULL_EVENT_TIME``), so
    it must be one: a NUL in it made every run fail at exec, a month 13 would reach the
    command as a date.
    """
    match = _EVENT_TIME.fullmatch(value)
    try:
        if match is None:
            raise ValueError("not YYYY-MM-DDThh:mm:ss[.fff]Z")
        year, month, day, hour, minute, second = (int(part) for part in match.groups())
        datetime(year, month, day, hour, minute, second)
    except ValueError as exc:
        raise UnparseableBody(
            f"{where}: {_show(value)} is not an ISO 8601 UTC time ({exc})"
        ) from None
    return value


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

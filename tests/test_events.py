"""events.parse_body against recorded payloads (tests/events/*.json) and hostile bodies."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import pytest

from s3pull.errors import UnparseableBody
from s3pull.events import Notification, ObjectChange, parse_body, sequencer_newer

EVENTS = Path(__file__).parent / "events"

AWS_TIME = "2026-11-29T10:15:30.123Z"
# The topic in every recorded SNS envelope.
_TOPIC = "arn:aws:sns:eu-west-1:123456789012:s3pull-events"


def _body(name: str) -> str:
    return (EVENTS / name).read_text(encoding="utf-8")


def _changes(*changes: ObjectChange) -> Notification:
    return Notification(changes=changes)


_PUT = ObjectChange(
    kind="created",
    event_name="ObjectCreated:Put",
    bucket="acme-shared",
    key="assets/css/site main.css",
    event_time=AWS_TIME,
    size=1024,
    etag="d41d8cd98f00b204e9800998ecf8427e",
    version_id="096fKKXTRTtl3on89fVO.nfljtsv6qko",
    sequencer="0055AED6DCD90281E5",
)

# moto 5.2.5 recorded: key "assets/a b/müller+100%.txt" arrives as quote_plus() of the whole
# key, '/' included; no sequencer, no versionId, and a delete still carries size and eTag.
_MOTO_KEY = "assets/a b/m\u00fcller+100%.txt"
_MOTO_PUT = ObjectChange(
    kind="created",
    event_name="ObjectCreated:Put",
    bucket="acme-shared",
    key=_MOTO_KEY,
    event_time="2026-11-30T00:52:15.056Z",
    size=5,
    etag="5d41402abc4b2a76b9719d911017c592",
)

# "EventBridge event message structure", Object Created, for the key moto's samples use.
_EB_PUT = ObjectChange(
    kind="created",
    event_name="ObjectCreated:Put",
    bucket="acme-shared",
    key=_MOTO_KEY,
    event_time="2026-11-29T10:15:30Z",
    size=5,
    etag="b1946ac92492d2347c6235b4d2611184",
    version_id="IYV3p45BT0ac8hjHg1houSdS1a.Mro8e",
    sequencer="617f08299329d189",
    event_source="aws.s3",
    delivery="eventbridge",
)

# Every file in tests/events and exactly what it must parse to.
EXPECTED: dict[str, Notification] = {
    "aws-object-created-put.json": _changes(_PUT),
    "aws-sns-wrapped-object-created-put.json": Notification(changes=(_PUT,), topic_arn=_TOPIC),
    "aws-object-created-multipart.json": _changes(
        ObjectChange(
            kind="created",
            event_name="ObjectCreated:CompleteMultipartUpload",
            bucket="acme-shared",
            key="assets/video/intro\u00fc.mp4",
            event_time=AWS_TIME,
            size=73400320,
            etag="a1b2c3d4e5f60718293a4b5c6d7e8f90-9",
            sequencer="0061D5A2B3C4D5E6F7",
        )
    ),
    "aws-object-created-copy-percent-key.json": _changes(
        ObjectChange(
            kind="created",
            event_name="ObjectCreated:Copy",
            bucket="acme-shared",
            # sent as "reports/Q3+100%2525+%C3%BCber.csv": decoded once, "%25" stays
            key="reports/Q3 100%25 \u00fcber.csv",
            event_time=AWS_TIME,
            size=2048,
            etag="6f5902ac237024bdd0c176cb93063dc4",
            sequencer="0061D5A2B3C4D5E700",
        )
    ),
    "aws-object-created-put-v2.6-unknown-fields.json": _changes(
        ObjectChange(
            kind="created",
            event_name="ObjectCreated:Put",
            bucket="acme-shared",
            key="data/plain.txt",
            event_time=AWS_TIME,
            size=0,
            etag="d41d8cd98f00b204e9800998ecf8427e",
            sequencer="0055AED6DCD90281F0",
        )
    ),
    "aws-object-removed-delete.json": _changes(
        ObjectChange(
            kind="removed",
            event_name="ObjectRemoved:Delete",
            bucket="acme-shared",
            key="assets/css/site main.css",
            event_time=AWS_TIME,
            sequencer="0055AED6DCD90281E6",
        )
    ),
    "aws-object-removed-delete-marker.json": _changes(
        ObjectChange(
            kind="removed",
            event_name="ObjectRemoved:DeleteMarkerCreated",
            bucket="acme-shared",
            key="assets/old.txt",
            event_time=AWS_TIME,
            # versionId is not URL-encoded: its '+' stays a '+'
            version_id="3HL4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY+MTRCxf3vjVBH40Nr8X8gdRQBpUMLUo",
            sequencer="0055AED6DCD90281E7",
        )
    ),
    "aws-lifecycle-expiration-delete.json": _changes(
        ObjectChange(
            kind="removed",
            event_name="LifecycleExpiration:Delete",
            bucket="acme-shared",
            key="incoming/2026-10-01/batch.csv",
            event_time=AWS_TIME,
            sequencer="0055AED6DCD90281E8",
        )
    ),
    "aws-lifecycle-expiration-delete-marker.json": _changes(
        ObjectChange(
            kind="removed",
            event_name="LifecycleExpiration:DeleteMarkerCreated",
            bucket="acme-shared",
            key="logs/2026/01/app.log",
            event_time=AWS_TIME,
            version_id="Ao1Ik5fKmHRmH0bAWx3cD.Z6Ot3zgwUa",
            sequencer="0055AED6DCD90281E9",
        )
    ),
    "aws-object-restore-completed.json": _changes(
        ObjectChange(
            kind="restored",
            event_name="ObjectRestore:Completed",
            bucket="acme-shared",
            key="archive/2019.tar",
            event_time=AWS_TIME,
            size=1048576,
            etag="b1946ac92492d2347c6235b4d2611184",
            version_id="null",
        )
    ),
    "aws-object-tagging-put.json": Notification(changes=(), ignored=("ObjectTagging:Put",)),
    "aws-three-records.json": Notification(
        changes=(
            ObjectChange(
                kind="created",
                event_name="ObjectCreated:Post",
                bucket="acme-shared",
                key="uploads/form 1.bin",
                event_time=AWS_TIME,
                size=10,
                etag="9e107d9d372bb6826bd81d3542a419d6",  # sent quoted
                sequencer="0055AED6DCD9028200",
            ),
            ObjectChange(
                kind="removed",
                event_name="ObjectRemoved:Delete",
                bucket="acme-shared",
                key="uploads/old+form.bin",
                event_time="2026-11-29T10:15:31.000Z",
                sequencer="0055AED6DCD9028201",
            ),
        ),
        ignored=("ObjectAcl:Put",),
    ),
    "aws-records-empty.json": Notification(changes=()),
    "aws-test-event.json": Notification(changes=(), test_event=True),
    "aws-sns-wrapped-test-event.json": Notification(changes=(), test_event=True, topic_arn=_TOPIC),
    "moto-test-event.json": Notification(changes=(), test_event=True),
    "moto-sns-wrapped-test-event.json": Notification(changes=(), test_event=True, topic_arn=_TOPIC),
    "moto-object-created-put.json": _changes(_MOTO_PUT),
    "moto-sns-wrapped-object-created-put.json": Notification(
        changes=(dataclasses.replace(_MOTO_PUT, event_time="2026-11-30T00:52:15.057Z"),),
        topic_arn=_TOPIC,
    ),
    "moto-object-created-copy.json": _changes(
        dataclasses.replace(
            _MOTO_PUT,
            event_name="ObjectCreated:Copy",
            key="assets/copy.txt",
            event_time="2026-11-30T00:52:15.064Z",
        )
    ),
    # EventBridge: the key as it is (no URL decoding), "aws.s3" as the source.
    "aws-eventbridge-object-created.json": _changes(_EB_PUT),
    "aws-eventbridge-object-created-multipart.json": _changes(
        dataclasses.replace(
            _EB_PUT,
            event_name="ObjectCreated:CompleteMultipartUpload",
            key="assets/video/%41 intro.mp4",  # not "A intro"
            size=73400320,
            etag="a1b2c3d4e5f60718293a4b5c6d7e8f90-9",
            version_id=None,
            sequencer="617f08299329d18a",
        )
    ),
    "aws-eventbridge-object-deleted.json": _changes(
        dataclasses.replace(
            _EB_PUT,
            kind="removed",
            event_name="ObjectRemoved:DeleteMarkerCreated",
            size=None,
            etag="d41d8cd98f00b204e9800998ecf8427e",
            version_id="1QW9g1Z99LUNbvaaYVpW9xDlOLU.qxgF",
            sequencer="617f0837b476e463",
        )
    ),
    "aws-eventbridge-object-deleted-lifecycle.json": _changes(
        dataclasses.replace(
            _EB_PUT,
            kind="removed",
            event_name="LifecycleExpiration:Delete",
            key="logs/2026/01/app.log",
            size=None,
            etag="d41d8cd98f00b204e9800998ecf8427e",
            version_id=None,
            sequencer=None,
        )
    ),
    "aws-eventbridge-object-restore-completed.json": _changes(
        dataclasses.replace(
            _EB_PUT,
            kind="restored",
            event_name="ObjectRestore:Completed",
            key="archive/2019 q4+\u00e9t\u00e9.tar",
            size=1048576,
            version_id="KKsjUC1.6gIjqtvhfg5AdMI0eCePIiT3",
            sequencer=None,
        )
    ),
    "aws-eventbridge-object-tags-added.json": Notification(
        changes=(), ignored=("Object Tags Added",)
    ),
    "moto-object-removed-delete.json": _changes(
        dataclasses.replace(
            _MOTO_PUT,
            kind="removed",
            event_name="ObjectRemoved:Delete",
            key="assets/copy.txt",
            event_time="2026-11-30T00:52:15.071Z",
        )
    ),
}


def test_every_recorded_payload_has_an_expectation() -> None:
    assert sorted(p.name for p in EVENTS.glob("*.json")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_recorded_payload(name: str) -> None:
    assert parse_body(_body(name)) == EXPECTED[name]


def _sns_wrap(message: str, topic_arn: Any = _TOPIC) -> str:
    # What SNS delivers to SQS without raw message delivery: the body, as a string, in Message.
    return json.dumps(
        {
            "Type": "Notification",
            "MessageId": "f7582c76-ff78-4f49-945e-0cc5267c1f8f",
            "TopicArn": topic_arn,
            "Subject": "Amazon S3 Notification",
            "Message": message,
            "Timestamp": "2026-11-29T10:15:30.456Z",
            "SignatureVersion": "1",
        }
    )


@pytest.mark.parametrize("name", sorted(n for n in EXPECTED if "sns-wrapped" not in n))
def test_sns_wrapped_equals_raw_but_names_its_topic(name: str) -> None:
    body = _body(name)
    wrapped = parse_body(_sns_wrap(body))
    assert wrapped.topic_arn == _TOPIC
    assert parse_body(body).topic_arn is None  # raw delivery cannot name a topic
    assert dataclasses.replace(wrapped, topic_arn=None) == parse_body(body)


def test_recorded_sns_wrapped_put_equals_raw_put() -> None:
    wrapped = parse_body(_body("aws-sns-wrapped-object-created-put.json"))
    assert wrapped.topic_arn == _TOPIC
    assert dataclasses.replace(wrapped, topic_arn=None) == parse_body(
        _body("aws-object-created-put.json")
    )


# A record to mutate: the AWS PUT sample.
def _record(**object_fields: Any) -> dict[str, Any]:
    record: dict[str, Any] = copy.deepcopy(json.loads(_body("aws-object-created-put.json")))[
        "Records"
    ][0]
    record["s3"]["object"].update(object_fields)
    return record


def _records(*records: dict[str, Any]) -> str:
    return json.dumps({"Records": list(records)})


def _set(record: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """Replace (or, with _GONE, remove) the field at a dotted path inside a record."""
    *parents, last = path.split(".")
    node = record
    for part in parents:
        node = node[part]
    if value is _GONE:
        del node[last]
    else:
        node[last] = value
    return record


_GONE = object()


def _bad(path: str, value: Any) -> str:
    return _records(_set(_record(), path, value))


@pytest.mark.parametrize(
    "event_name",
    [
        "ObjectCreated:Put",
        "ObjectCreated:Post",
        "ObjectCreated:Copy",
        "ObjectCreated:CompleteMultipartUpload",
    ],
)
def test_created_event_types(event_name: str) -> None:
    (change,) = parse_body(_records(_set(_record(), "eventName", event_name))).changes
    assert (change.kind, change.event_name) == ("created", event_name)


@pytest.mark.parametrize(
    "event_name",
    [
        "ObjectRemoved:Delete",
        "ObjectRemoved:DeleteMarkerCreated",
        "LifecycleExpiration:Delete",
        "LifecycleExpiration:DeleteMarkerCreated",
    ],
)
def test_removed_event_types(event_name: str) -> None:
    (change,) = parse_body(_records(_set(_record(), "eventName", event_name))).changes
    assert (change.kind, change.event_name) == ("removed", event_name)


@pytest.mark.parametrize(
    "event_name",
    [
        "ObjectRestore:Post",
        "ObjectRestore:Delete",
        "ObjectTagging:Put",
        "ObjectTagging:Delete",
        "ObjectAcl:Put",
        "Replication:OperationFailedReplication",
        "Replication:OperationReplicatedAfterThreshold",
        "LifecycleTransition",
        "IntelligentTiering",
        "ReducedRedundancyLostObject",
        "SomethingNew:FromTheFuture",
    ],
)
def test_ignored_event_types(event_name: str) -> None:
    body = _records(_set(_record(), "eventName", event_name))
    assert parse_body(body) == Notification(changes=(), ignored=(event_name,))


@pytest.mark.parametrize(
    ("encoded", "decoded"),
    [
        ("plain.txt", "plain.txt"),
        ("a+b.txt", "a b.txt"),  # S3: space as '+'
        ("a%2Bb.txt", "a+b.txt"),  # a real '+'
        ("dir%2Fsub%2Ff.txt", "dir/sub/f.txt"),  # moto: '/' as %2F
        ("dir/sub/f.txt", "dir/sub/f.txt"),  # S3: '/' left alone
        ("100%25.txt", "100%.txt"),
        ("100%2525.txt", "100%25.txt"),  # decoded once, not twice
        ("%2541", "%41"),  # not "A"
        ("m%C3%BCller+%E2%82%AC.txt", "m\u00fcller \u20ac.txt"),
        ("emoji%F0%9F%98%80", "emoji\U0001f600"),
        ("folder%2F", "folder/"),  # a folder placeholder is still a key; mirror decides
        ("..%2F..%2Fetc%2Fpasswd", "../../etc/passwd"),  # unsafe keys are for safe_path
        ("nul%00byte", "nul\x00byte"),
        ("100%", "100%"),  # no escape to undo
    ],
)
def test_key_decoded_once(encoded: str, decoded: str) -> None:
    (change,) = parse_body(_records(_record(key=encoded))).changes
    assert change.key == decoded


@pytest.mark.parametrize("version", ["2.0", "2.1", "2.2", "2.3", "2.6", "2.9", "2.10"])
def test_event_version_2_x_accepted(version: str) -> None:
    (change,) = parse_body(_records(_set(_record(), "eventVersion", version))).changes
    assert change == _PUT


def test_unknown_fields_are_ignored() -> None:
    record = _record(newField={"x": 1})
    record["brandNew"] = [None]
    assert parse_body(_records(record)) == _changes(_PUT)


def test_event_source_is_reported_not_judged() -> None:
    # Whether a source is trusted is sources.Trust's call, with the configuration at hand.
    record = _set(_record(), "eventSource", "aws:s3-express")
    (change,) = parse_body(_records(record)).changes
    assert change == dataclasses.replace(_PUT, event_source="aws:s3-express")
    assert _PUT.event_source == "aws:s3"


def test_recorded_sns_topics() -> None:
    # moto's envelope names the topic the test pipeline created; AWS's the sample topic.
    for name in sorted(EXPECTED):
        topic = parse_body(_body(name)).topic_arn
        assert topic == (_TOPIC if "sns-wrapped" in name else None), name


@pytest.mark.parametrize(
    "event_time",
    [
        "2026-11-29T10:15:30.123Z",  # AWS and moto
        "2026-11-29T10:15:30Z",
        "2026-11-29T10:15:30.123456Z",
        "2026-11-29T10:15:30.123456789Z",
        "2026-11-29T10:15:30.123+00:00",
        "2024-02-29T23:59:59.999Z",  # a leap day
    ],
)
def test_event_time_iso_8601_utc_accepted_as_sent(event_time: str) -> None:
    (change,) = parse_body(_records(_set(_record(), "eventTime", event_time))).changes
    assert change.event_time == event_time  # passed on unchanged, once proven sound


@pytest.mark.parametrize(
    "bucket",
    [
        "acme-shared",
        "a.b-c",
        "abc",
        "a" * 63,
        # Legacy us-east-1 names (before 2018: capitals, '_', up to 255): S3 still holds
        # them. The configuration never names one, so sources.Trust refuses their events.
        "Legacy_Bucket",
        "b" * 255,
        "logs--use1-az4--x-s3",  # a directory bucket
    ],
)
def test_valid_bucket_names_accepted(bucket: str) -> None:
    (change,) = parse_body(_records(_set(_record(), "s3.bucket.name", bucket))).changes
    assert change.bucket == bucket


@pytest.mark.parametrize(
    ("etag", "expected"),
    [
        ("d41d8cd98f00b204e9800998ecf8427e", "d41d8cd98f00b204e9800998ecf8427e"),
        ("D41D8CD98F00B204E9800998ECF8427E", "D41D8CD98F00B204E9800998ECF8427E"),
        ("a1b2c3d4e5f60718293a4b5c6d7e8f90-9", "a1b2c3d4e5f60718293a4b5c6d7e8f90-9"),
        ('"a1b2c3d4e5f60718293a4b5c6d7e8f90-10000"', "a1b2c3d4e5f60718293a4b5c6d7e8f90-10000"),
    ],
)
def test_etags_hex_or_multipart(etag: str, expected: str) -> None:
    (change,) = parse_body(_records(_record(eTag=etag))).changes
    assert change.etag == expected


@pytest.mark.parametrize(
    "version_id",
    ["null", "096fKKXTRTtl3on89fVO.nfljtsv6qko", "3HL4kqtJlcpXroDTDmJ+rmSpXd3d/IbrHY+M=_-"],
)
def test_printable_version_ids_accepted(version_id: str) -> None:
    (change,) = parse_body(_records(_record(versionId=version_id))).changes
    assert change.version_id == version_id


@pytest.mark.parametrize(
    "key", ["a\nb", "line\nERROR m: deleted x", "tab\there", "del\x7f", "bell\x07"]
)
def test_keys_with_control_characters_are_left_to_safe_path(key: str) -> None:
    # Legal in S3; paths.safe_parts decides what may be written, the log escapes them.
    (change,) = parse_body(_records(_record(key=quote_plus(key)))).changes
    assert change.key == key


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"size": None, "eTag": None, "versionId": None, "sequencer": None}, (None,) * 4),
        ({"eTag": "", "versionId": "", "sequencer": ""}, (1024, None, None, None)),
        ({"eTag": '"abc"'}, (1024, "abc", _PUT.version_id, _PUT.sequencer)),
        ({"versionId": "null"}, (1024, _PUT.etag, "null", _PUT.sequencer)),
    ],
    ids=["null", "empty", "quoted-etag", "versionId-null-string"],
)
def test_optional_object_fields(fields: dict[str, Any], expected: tuple[Any, ...]) -> None:
    (change,) = parse_body(_records(_record(**fields))).changes
    assert (change.size, change.etag, change.version_id, change.sequencer) == expected


def test_records_are_frozen() -> None:
    notification = parse_body(_body("aws-object-created-put.json"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        notification.changes[0].key = "elsewhere"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        notification.test_event = True  # type: ignore[misc]


def test_one_bad_record_spoils_the_body_and_the_error_names_it() -> None:
    body = _records(_record(), _record(key=123))
    with pytest.raises(UnparseableBody, match=r"Records\[1\]\.s3\.object\.key"):
        parse_body(body)


_SNS_PUT = json.loads(_body("aws-sns-wrapped-object-created-put.json"))
_PUT_BODY = _body("aws-object-created-put.json")

MALFORMED: dict[str, str] = {
    "empty": "",
    "not-json": "hello",
    "truncated-json": _PUT_BODY[: len(_PUT_BODY) // 2],
    "json-array": "[]",
    "json-number": "42",
    "json-string": '"Records"',
    "json-null": "null",
    "no-records": "{}",
    "unknown-event": json.dumps({"Event": "s3:SomethingElse"}),
    "records-object": json.dumps({"Records": {}}),
    "records-null": json.dumps({"Records": None}),
    "record-not-object": json.dumps({"Records": [1]}),
    "record-missing-s3": _bad("s3", _GONE),
    "s3-not-object": _bad("s3", "acme-shared"),
    "bucket-missing": _bad("s3.bucket", _GONE),
    "bucket-name-missing": _bad("s3.bucket.name", _GONE),
    "bucket-name-empty": _bad("s3.bucket.name", ""),
    "bucket-name-number": _bad("s3.bucket.name", 7),
    "object-missing": _bad("s3.object", _GONE),
    "object-array": _bad("s3.object", []),
    "key-missing": _bad("s3.object.key", _GONE),
    "key-null": _bad("s3.object.key", None),
    "key-number": _bad("s3.object.key", 123),
    "key-empty": _bad("s3.object.key", ""),
    "key-not-utf8": _bad("s3.object.key", "bad%FFbyte"),
    "key-lone-surrogate": _bad("s3.object.key", "bad\ud800"),
    "size-string": _bad("s3.object.size", "1024"),
    "size-bool": _bad("s3.object.size", True),
    "size-float": _bad("s3.object.size", 1024.5),
    "size-negative": _bad("s3.object.size", -1),
    "etag-number": _bad("s3.object.eTag", 5),
    "version-id-object": _bad("s3.object.versionId", {}),
    "sequencer-number": _bad("s3.object.sequencer", 12),
    "sequencer-not-hex": _bad("s3.object.sequencer", "0055AED6DCD90281EZ"),
    "event-name-missing": _bad("eventName", _GONE),
    "event-name-empty": _bad("eventName", ""),
    "event-name-list": _bad("eventName", ["ObjectCreated:Put"]),
    "event-version-missing": _bad("eventVersion", _GONE),
    "event-version-1.0": _bad("eventVersion", "1.0"),
    "event-version-3.0": _bad("eventVersion", "3.0"),
    "event-version-2": _bad("eventVersion", "2"),
    "event-version-2.x": _bad("eventVersion", "2.x"),
    "event-version-number": _bad("eventVersion", 2.1),
    "event-time-missing": _bad("eventTime", _GONE),
    "event-time-number": _bad("eventTime", 1764412530),
    "sns-message-not-json": json.dumps({**_SNS_PUT, "Message": "not json {"}),
    "sns-message-truncated": json.dumps({**_SNS_PUT, "Message": _SNS_PUT["Message"][:-2]}),
    "sns-message-object": json.dumps({**_SNS_PUT, "Message": json.loads(_SNS_PUT["Message"])}),
    "sns-message-missing": json.dumps({k: v for k, v in _SNS_PUT.items() if k != "Message"}),
    "sns-message-array": json.dumps({**_SNS_PUT, "Message": "[]"}),
    "sns-subscription-confirmation": json.dumps(
        {**_SNS_PUT, "Type": "SubscriptionConfirmation", "Message": "You have chosen..."}
    ),
    "sns-twice-wrapped": _sns_wrap(_sns_wrap(_PUT_BODY)),
    # The envelope's TopicArn is what sources.Trust checks: it must be a topic's ARN.
    "sns-topic-missing": _sns_wrap(_PUT_BODY, topic_arn=None),
    "sns-topic-number": _sns_wrap(_PUT_BODY, topic_arn=7),
    "sns-topic-empty": _sns_wrap(_PUT_BODY, topic_arn=""),
    "sns-topic-not-an-arn": _sns_wrap(_PUT_BODY, topic_arn="arn:aws:sns:x"),
    "sns-topic-a-queue": _sns_wrap(_PUT_BODY, topic_arn="arn:aws:sqs:eu-west-1:123456789012:q"),
    "sns-topic-newline": _sns_wrap(_PUT_BODY, topic_arn=_TOPIC + "\nx"),
    # Every field passed on (to logs, the ledger, a trigger's environment) is checked:
    # S3 never sends these, so such a body is forged or broken and goes to the DLQ whole.
    "event-source-missing": _bad("eventSource", _GONE),
    "event-source-number": _bad("eventSource", 3),
    "event-source-newline": _bad("eventSource", "aws:s3\nERROR x"),
    "event-name-newline": _bad("eventName", "ObjectCreated:Put\nERROR m: deleted x"),
    "event-name-nul": _bad("eventName", "ObjectCreated:Put\x00"),
    "event-time-nul": _bad("eventTime", "2026-11-29T10:15:30.123Z\x00"),
    "event-time-nul-inside": _bad("eventTime", "2026-11-29T10:15\x0030.123Z"),
    "event-time-newline": _bad("eventTime", "2026-11-29T10:15:30.123Z\nERROR x"),
    "event-time-words": _bad("eventTime", "yesterday"),
    "event-time-no-zone": _bad("eventTime", "2026-11-29T10:15:30.123"),
    "event-time-other-zone": _bad("eventTime", "2026-11-29T10:15:30.123+02:00"),
    "event-time-date-only": _bad("eventTime", "2026-11-29"),
    "event-time-month-13": _bad("eventTime", "2026-13-29T10:15:30.123Z"),
    "event-time-feb-30": _bad("eventTime", "2026-02-30T10:15:30.123Z"),
    "event-time-hour-24": _bad("eventTime", "2026-11-29T24:15:30.123Z"),
    "event-time-arabic-digits": _bad("eventTime", "\u0662026-11-29T10:15:30.123Z"),
    "event-time-too-long": _bad("eventTime", "2026-11-29T10:15:30." + "1" * 100 + "Z"),
    "bucket-name-newline": _bad("s3.bucket.name", "acme-shared\nERROR"),
    "bucket-name-nul": _bad("s3.bucket.name", "acme\x00shared"),
    "bucket-name-slash": _bad("s3.bucket.name", "acme/shared"),
    "bucket-name-space": _bad("s3.bucket.name", "acme shared"),
    "bucket-name-short": _bad("s3.bucket.name", "ab"),
    "bucket-name-long": _bad("s3.bucket.name", "b" * 256),
    "bucket-name-leading-dot": _bad("s3.bucket.name", ".acme"),
    "bucket-name-unicode": _bad("s3.bucket.name", "acm\u00e9"),
    "etag-newline": _bad("s3.object.eTag", "d41d8cd98f00b204e9800998ecf8427e\n"),
    "etag-not-hex": _bad("s3.object.eTag", "not-an-etag"),
    "etag-bad-part-count": _bad("s3.object.eTag", "d41d8cd98f00b204e9800998ecf8427e-x"),
    "etag-quote-inside": _bad("s3.object.eTag", 'd41d8"cd98f00b204'),
    "version-id-nul": _bad("s3.object.versionId", "abc\x00"),
    "version-id-newline": _bad("s3.object.versionId", "abc\nERROR"),
    "version-id-space": _bad("s3.object.versionId", "a b"),
    "version-id-unicode": _bad("s3.object.versionId", "v\u2028"),
    "version-id-too-long": _bad("s3.object.versionId", "v" * 1025),
    "second-record-bad": _records(_record(), _set(_record(), "eventVersion", "3.0")),
    "nested-too-deep": "[" * 100_000,
}


@pytest.mark.parametrize("body", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_body_is_unparseable(body: str) -> None:
    with pytest.raises(UnparseableBody):
        parse_body(body)


@pytest.mark.parametrize(
    ("candidate", "current", "newer"),
    [
        ("0055AED6DCD90281E6", "0055AED6DCD90281E5", True),
        ("0055AED6DCD90281E5", "0055AED6DCD90281E6", False),
        ("0055AED6DCD90281E5", "0055AED6DCD90281E5", False),  # a duplicate is not newer
        ("0055AED6DCD90281E5", "0055AED6DCD90281E50", False),  # equal once padded
        ("0055AED6DCD90281E50", "0055AED6DCD90281E5", False),
        ("0055AED6DCD90281E51", "0055AED6DCD90281E5", True),  # longer and greater
        ("0055AED6DCD90281E5", "0055AED6DCD90281E4FF", True),  # shorter and greater
        ("0055AED6DCD90281E4", "0055AED6DCD90281E4FF", False),  # shorter and smaller
        ("0055aed6dcd90281e6", "0055AED6DCD90281E5", True),  # case does not matter
        ("0055aed6dcd90281e5", "0055AED6DCD90281E5", False),
        ("A", "9", True),  # hex digits, not ASCII accidents
        ("a", "9", True),
        ("1", "0FFFFFFF", True),
    ],
)
def test_sequencer_newer(candidate: str, current: str, newer: bool) -> None:
    assert sequencer_newer(candidate, current) is newer


@pytest.mark.parametrize(("candidate", "current"), [("", "00"), ("00", "0x1"), ("G1", "00")])
def test_sequencer_newer_refuses_non_hex(candidate: str, current: str) -> None:
    with pytest.raises(ValueError):
        sequencer_newer(candidate, current)


# EventBridge bodies: the AWS sample, mutated.


def _eb(**object_fields: Any) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(_body("aws-eventbridge-object-created.json"))
    event["detail"]["object"].update(object_fields)
    return event


@pytest.mark.parametrize(
    "key",
    [
        "a b/c d.txt",  # a space stays a space
        "a+b.txt",  # and '+' stays '+': never decoded as a space
        "100%.txt",
        "100%25.txt",  # not "100%.txt"
        "%41",  # not "A"
        "m\u00fcller \u20ac/\u65e5\u672c\u8a9e.txt",
        "emoji\U0001f600",
        "dir%2Fsub",  # not "dir/sub"
        "../../etc/passwd",  # unsafe keys are for safe_path, as for notifications
    ],
)
def test_eventbridge_key_is_taken_as_sent(key: str) -> None:
    (change,) = parse_body(json.dumps(_eb(key=key))).changes
    assert change.key == key
    assert (change.delivery, change.event_source) == ("eventbridge", "aws.s3")


@pytest.mark.parametrize(
    ("detail_type", "fields", "kind", "event_name"),
    [
        ("Object Created", {"reason": "PutObject"}, "created", "ObjectCreated:Put"),
        ("Object Created", {"reason": "POST Object"}, "created", "ObjectCreated:Post"),
        ("Object Created", {"reason": "CopyObject"}, "created", "ObjectCreated:Copy"),
        (
            "Object Created",
            {"reason": "CompleteMultipartUpload"},
            "created",
            "ObjectCreated:CompleteMultipartUpload",
        ),
        ("Object Created", {"reason": "SomethingNew"}, "created", "ObjectCreated:*"),
        (
            "Object Deleted",
            {"reason": "DeleteObject", "deletion-type": "Permanently Deleted"},
            "removed",
            "ObjectRemoved:Delete",
        ),
        (
            "Object Deleted",
            {"reason": "DeleteObject", "deletion-type": "Delete Marker Created"},
            "removed",
            "ObjectRemoved:DeleteMarkerCreated",
        ),
        (
            "Object Deleted",
            {"reason": "Lifecycle Expiration", "deletion-type": "Delete Marker Created"},
            "removed",
            "LifecycleExpiration:DeleteMarkerCreated",
        ),
        ("Object Restore Completed", {}, "restored", "ObjectRestore:Completed"),
    ],
)
def test_eventbridge_detail_types(
    detail_type: str, fields: dict[str, str], kind: str, event_name: str
) -> None:
    event = _eb()
    event["detail-type"] = detail_type
    event["detail"].pop("reason")
    event["detail"].update(fields)
    (change,) = parse_body(json.dumps(event)).changes
    assert (change.kind, change.event_name) == (kind, event_name)


@pytest.mark.parametrize(
    "detail_type",
    [
        "Object Restore Initiated",
        "Object Restore Expired",
        "Object Storage Class Changed",
        "Object Access Tier Changed",
        "Object ACL Updated",
        "Object Tags Added",
        "Object Tags Deleted",
        "Something New From The Future",
    ],
)
def test_eventbridge_ignored_detail_types(detail_type: str) -> None:
    event = _eb()
    event["detail-type"] = detail_type
    assert parse_body(json.dumps(event)) == Notification(changes=(), ignored=(detail_type,))


def test_eventbridge_source_is_reported_not_judged() -> None:
    event = _eb()
    event["source"] = "acme.forged"
    (change,) = parse_body(json.dumps(event)).changes
    assert change.event_source == "acme.forged"  # sources.Trust refuses it


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("detail-type", 7),
        ("detail-type", "Object\nCreated"),
        ("source", None),
        ("time", "yesterday"),
        ("time", "2026-13-01T00:00:00Z"),
        ("detail", None),
        ("detail", []),
        ("detail.bucket", None),
        ("detail.bucket.name", "a/b"),
        ("detail.object", None),
        ("detail.object.key", None),
        ("detail.object.key", ""),
        ("detail.object.key", 5),
        ("detail.object.key", "lone\ud800surrogate"),
        ("detail.object.size", "5"),
        ("detail.object.size", -1),
        ("detail.object.etag", "not-hex!"),
        ("detail.object.version-id", "with space"),
        ("detail.object.sequencer", "xyz"),
        ("resources", "arn:aws:s3:::acme-shared"),
        ("resources", ["arn:aws:s3:::another-bucket"]),  # names another bucket
    ],
)
def test_malformed_eventbridge_body_is_unparseable(path: str, value: Any) -> None:
    event = _eb()
    *parents, last = path.split(".")
    node = event
    for part in parents:
        node = node[part]
    if value is None:
        del node[last]
    else:
        node[last] = value
    with pytest.raises(UnparseableBody):
        parse_body(json.dumps(event))


def test_restore_completed_notification_is_a_restored_change() -> None:
    body = _records(_set(_record(), "eventName", "ObjectRestore:Completed"))
    (change,) = parse_body(body).changes
    assert (change.kind, change.key) == ("restored", "assets/css/site main.css")

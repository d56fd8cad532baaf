"""sources: which SNS topics, event sources and buckets a message may come from.

The judgement (``Trust.judge``) is pure and tested on parsed recorded bodies; the
configuration key ``[queue] accept_topics`` on ``parse_config``; the queue policy's
topics on a moto queue, as the daemon reads them at start.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from s3pull.aws import open_clients
from s3pull.config import Config, parse_config
from s3pull.emulator import Pipeline
from s3pull.errors import ConfigError
from s3pull.events import Notification, ObjectChange, parse_body
from s3pull.sources import Refusal, Trust, Verdict, load_trust, policy_topics

EVENTS = Path(__file__).parent / "events"
TOPIC = "arn:aws:sns:eu-west-1:123456789012:s3pull-events"  # the recorded envelopes' topic
OTHER_TOPIC = "arn:aws:sns:eu-west-1:999999999999:someone-else"
QUEUE_URL = "https://sqs.eu-west-1.amazonaws.com/123456789012/s3pull-web"


def _parsed(name: str) -> Notification:
    return parse_body((EVENTS / name).read_text(encoding="utf-8"))


def _config(queue: str, buckets: tuple[str, str] = ("acme-shared", "acme-uploads")) -> Config:
    mirror, trigger = buckets
    return parse_config(
        f"""
[queue]
{queue}

[[mirror]]
name = "assets"
bucket = "{mirror}"
directory = "/srv/assets"

[[trigger]]
name = "orders"
bucket = "{trigger}"
marker = "_READY"
directory = "/srv/incoming"
command = ["/bin/true"]
""",
        Path("/etc/s3pull/s3pull.toml"),
        {},
    )


TRUST = Trust(topics=frozenset({TOPIC}), buckets=frozenset({"acme-shared", "acme-uploads"}))


# -- the judgement ------------------------------------------------------------------


def test_the_configured_topic_and_bucket_are_accepted() -> None:
    notification = _parsed("aws-sns-wrapped-object-created-put.json")
    assert TRUST.judge(notification) == Verdict(accepted=notification, refusals=())


def test_raw_delivery_names_no_topic_and_is_accepted() -> None:
    # Nothing to check the topic against: eventSource and bucket still are.
    notification = _parsed("aws-three-records.json")
    assert notification.topic_arn is None
    assert TRUST.judge(notification) == Verdict(accepted=notification, refusals=())


def test_another_topic_is_refused_whole() -> None:
    notification = dataclasses.replace(_parsed("aws-three-records.json"), topic_arn=OTHER_TOPIC)
    verdict = TRUST.judge(notification)
    # Nothing of it is acted on or logged as acknowledged: not its changes, not its
    # ignored records.
    assert verdict.accepted == Notification(changes=(), topic_arn=OTHER_TOPIC)
    (refusal,) = verdict.refusals
    assert refusal.change is None
    assert OTHER_TOPIC in str(refusal) and "topic" in refusal.reason


def test_a_test_event_from_another_topic_is_refused_not_acknowledged() -> None:
    notification = dataclasses.replace(
        _parsed("aws-sns-wrapped-test-event.json"), topic_arn=OTHER_TOPIC
    )
    verdict = TRUST.judge(notification)
    assert not verdict.accepted.test_event
    assert len(verdict.refusals) == 1


def test_no_accepted_topic_refuses_every_envelope() -> None:
    closed = dataclasses.replace(TRUST, topics=frozenset())
    verdict = closed.judge(_parsed("aws-sns-wrapped-object-created-put.json"))
    assert verdict.accepted.changes == () and len(verdict.refusals) == 1
    raw = _parsed("aws-object-created-put.json")
    assert closed.judge(raw).accepted == raw


def test_policy_wildcards_match_like_arn_like() -> None:
    # A queue policy may say ArnLike arn:aws:sns:*:123456789012:s3pull-*.
    trust = dataclasses.replace(
        TRUST, topics=frozenset({"arn:aws:sns:*:123456789012:s3pull-?vents"})
    )
    accepted = _parsed("aws-sns-wrapped-object-created-put.json")
    assert trust.judge(accepted).refusals == ()
    for topic in (
        OTHER_TOPIC,
        "arn:aws:sns:eu-west-1:123456789012:s3pull-events-x",
        "arn:aws:sns:eu-west-1:123456789012:s3pull-xxvents",
    ):
        notification = dataclasses.replace(accepted, topic_arn=topic)
        assert len(trust.judge(notification).refusals) == 1, topic


def test_a_record_from_another_event_source_is_refused_the_rest_applied() -> None:
    good, removed = _parsed("aws-three-records.json").changes
    forged = dataclasses.replace(good, event_source="aws:lambda")
    notification = Notification(changes=(forged, removed), ignored=("ObjectAcl:Put",))
    verdict = TRUST.judge(notification)
    assert verdict.accepted == Notification(changes=(removed,), ignored=("ObjectAcl:Put",))
    (refusal,) = verdict.refusals
    assert refusal.change == forged
    assert "'aws:lambda'" in str(refusal) and "aws:s3" in str(refusal)
    assert refusal.key == forged.key and refusal.where == "source"


@pytest.mark.parametrize(
    "name",
    [
        "aws-eventbridge-object-created.json",
        "aws-eventbridge-object-deleted.json",
        "aws-eventbridge-object-restore-completed.json",
    ],
)
def test_eventbridge_events_are_judged_like_notifications(name: str) -> None:
    event = _parsed(name)
    assert TRUST.judge(event) == Verdict(event, ())
    # SNS-wrapped (the rule targets the topic, no raw delivery): by its topic too.
    assert TRUST.judge(dataclasses.replace(event, topic_arn=TOPIC)).refusals == ()
    (whole,) = TRUST.judge(dataclasses.replace(event, topic_arn=OTHER_TOPIC)).refusals
    assert whole.change is None
    change = event.changes[0]
    # "aws:s3" is a notification's source, never an EventBridge event's.
    for source in ("aws:s3", "acme.forged"):
        forged = Notification(changes=(dataclasses.replace(change, event_source=source),))
        (refusal,) = TRUST.judge(forged).refusals
        assert f"source {source!r} is not aws.s3" in str(refusal)
    elsewhere = Notification(changes=(dataclasses.replace(change, bucket="not-ours"),))
    (refusal,) = TRUST.judge(elsewhere).refusals
    assert "'not-ours'" in str(refusal)


def test_a_notification_claiming_the_eventbridge_source_is_refused() -> None:
    put = _parsed("aws-object-created-put.json").changes[0]
    (refusal,) = TRUST.judge(
        Notification(changes=(dataclasses.replace(put, event_source="aws.s3"),))
    ).refusals
    assert "eventSource 'aws.s3' is not aws:s3" in str(refusal)


def test_a_record_for_a_bucket_nothing_is_configured_for_is_refused() -> None:
    put = _parsed("aws-object-created-put.json").changes[0]
    elsewhere = dataclasses.replace(put, bucket="not-ours")
    verdict = TRUST.judge(Notification(changes=(put, elsewhere)))
    assert verdict.accepted.changes == (put,)
    (refusal,) = verdict.refusals
    assert refusal.change == elsewhere
    assert "'not-ours'" in str(refusal) and "s3://not-ours/" in str(refusal)


def test_refusal_lines_show_keys_escaped() -> None:
    put = _parsed("aws-object-created-put.json").changes[0]
    hostile = dataclasses.replace(put, bucket="not-ours", key="a\nERROR m: deleted x")
    (refusal,) = TRUST.judge(Notification(changes=(hostile,))).refusals
    assert "\n" not in str(refusal)


def test_refusal_is_a_value() -> None:
    put = _parsed("aws-object-created-put.json").changes[0]
    refusal = Refusal("bucket 'x' is not configured here", put)
    assert refusal == Refusal("bucket 'x' is not configured here", put)
    with pytest.raises(dataclasses.FrozenInstanceError):
        refusal.reason = "fine"  # type: ignore[misc]


# -- from the configuration -----------------------------------------------------------


def test_trust_from_a_topic_configuration() -> None:
    config = _config(f'topic_arn = "{TOPIC}"')
    trust = Trust.from_config(config)
    assert trust == Trust(frozenset({TOPIC}), frozenset({"acme-shared", "acme-uploads"}))
    # A queue policy does not widen what topic_arn says.
    assert Trust.from_config(config, frozenset({OTHER_TOPIC})).topics == {TOPIC}


def test_trust_from_accept_topics() -> None:
    config = _config(f'url = "{QUEUE_URL}"\naccept_topics = ["{TOPIC}", "{OTHER_TOPIC}"]')
    assert config.queue.accept_topics == (TOPIC, OTHER_TOPIC)
    assert Trust.from_config(config, frozenset({"x"})).topics == {TOPIC, OTHER_TOPIC}


def test_trust_from_the_queue_policy_when_accept_topics_is_unset() -> None:
    config = _config(f'url = "{QUEUE_URL}"')
    assert config.queue.accept_topics == ()
    assert Trust.from_config(config, frozenset({TOPIC})).topics == {TOPIC}
    assert Trust.from_config(config).topics == frozenset()


def test_one_bucket_for_mirror_and_trigger() -> None:
    config = _config(f'topic_arn = "{TOPIC}"', buckets=("acme-shared", "acme-shared"))
    assert Trust.from_config(config).buckets == {"acme-shared"}


@pytest.mark.parametrize(
    ("queue", "key", "word"),
    [
        (f'topic_arn = "{TOPIC}"\naccept_topics = ["{TOPIC}"]', "queue.accept_topics", "url"),
        (f'url = "{QUEUE_URL}"\naccept_topics = "{TOPIC}"', "queue.accept_topics", "array"),
        (f'url = "{QUEUE_URL}"\naccept_topics = []', "queue.accept_topics", "at least one"),
        (f'url = "{QUEUE_URL}"\naccept_topics = [1]', "queue.accept_topics[0]", "string"),
        (
            f'url = "{QUEUE_URL}"\naccept_topics = ["{TOPIC}", "s3pull-events"]',
            "queue.accept_topics[1]",
            "ARN",
        ),
        (
            f'url = "{QUEUE_URL}"\naccept_topics = ["arn:aws:sns:*:123456789012:*"]',
            "queue.accept_topics[0]",
            "ARN",
        ),
    ],
)
def test_accept_topics_invalid(queue: str, key: str, word: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _config(queue)
    assert caught.value.key == key
    assert word in caught.value.problem


# -- the queue policy ---------------------------------------------------------------


def _policy(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def _allow(condition: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    statement: dict[str, Any] = {
        "Effect": "Allow",
        "Principal": {"Service": "sns.amazonaws.com"},
        "Action": "sqs:SendMessage",
        "Resource": "arn:aws:sqs:eu-west-1:123456789012:q",
        **fields,
    }
    if condition is not None:
        statement["Condition"] = condition
    return statement


@pytest.mark.parametrize(
    ("policy", "topics"),
    [
        (None, set()),
        ("", set()),
        (_policy(_allow({"ArnEquals": {"aws:SourceArn": TOPIC}})), {TOPIC}),
        (
            _policy(_allow({"ArnLike": {"aws:SourceArn": [TOPIC, OTHER_TOPIC]}})),
            {TOPIC, OTHER_TOPIC},
        ),
        (_policy(_allow({"StringEquals": {"AWS:SOURCEARN": TOPIC}})), {TOPIC}),
        (_policy(_allow({"ForAnyValue:ArnLike": {"aws:SourceArn": TOPIC}})), {TOPIC}),
        (
            _policy(_allow({"ArnLike": {"aws:SourceArn": "arn:aws:sns:*:1:*"}})),
            {"arn:aws:sns:*:1:*"},
        ),
        # A single statement, not a list; actions by wildcard; principal "*".
        (
            json.dumps(
                {"Statement": _allow({"ArnEquals": {"aws:SourceArn": TOPIC}}, Action="sqs:*")}
            ),
            {TOPIC},
        ),
        (_policy(_allow({"ArnEquals": {"aws:SourceArn": TOPIC}}, Principal="*")), {TOPIC}),
        # Not a topic: S3 sending straight to the queue, or a bucket condition.
        (_policy(_allow({"ArnLike": {"aws:SourceArn": "arn:aws:s3:::acme-shared"}})), set()),
        # Names no topic: an open policy lets every topic send, which verifies nothing.
        (_policy(_allow()), set()),
        (_policy(_allow({"StringEquals": {"aws:SourceAccount": "123456789012"}})), set()),
        # Denies, negations and other actions let nothing send.
        (_policy(_allow({"ArnEquals": {"aws:SourceArn": TOPIC}}, Effect="Deny")), set()),
        (_policy(_allow({"ArnNotEquals": {"aws:SourceArn": TOPIC}})), set()),
        (
            _policy(_allow({"ArnEquals": {"aws:SourceArn": TOPIC}}, Action="sqs:ReceiveMessage")),
            set(),
        ),
        # Not JSON, or not a policy: nothing is trusted (and the daemon says so).
        ("{", set()),
        ("[]", set()),
        (json.dumps({"Statement": [1, None, "x"]}), set()),
    ],
)
def test_policy_topics(policy: str | None, topics: set[str]) -> None:
    assert policy_topics(policy) == topics


async def test_load_trust_reads_the_queue_policy_once(pipeline: Pipeline, tmp_path: Path) -> None:
    # emulator.create_pipeline sets the policy provision.py sets: only the topic may send.
    config = _config(f'url = "{pipeline.queue_url}"', buckets=(pipeline.bucket, pipeline.bucket))
    config = dataclasses.replace(
        config,
        aws=dataclasses.replace(config.aws, region="us-east-1", endpoint_url=pipeline.endpoint),
    )
    async with open_clients(config, "sqs") as clients:
        trust = await load_trust(clients.sqs, config, [pipeline.queue_url])
        assert trust == Trust(frozenset({pipeline.topic_arn}), frozenset({pipeline.bucket}))
        # accept_topics wins: no policy is read (a queue that does not exist proves it).
        accepting = dataclasses.replace(
            config, queue=dataclasses.replace(config.queue, accept_topics=(TOPIC,))
        )
        missing = f"{pipeline.queue_url}-gone-{uuid.uuid4().hex[:6]}"
        assert (await load_trust(clients.sqs, accepting, [missing])).topics == {TOPIC}


def test_judging_a_recorded_moto_envelope_by_its_pipeline(pipeline: Pipeline) -> None:
    body = (EVENTS / "moto-sns-wrapped-object-created-put.json").read_text()
    envelope = json.loads(body)
    envelope["TopicArn"] = pipeline.topic_arn
    notification = parse_body(json.dumps(envelope))
    change: ObjectChange = notification.changes[0]
    trust = Trust(frozenset({pipeline.topic_arn}), frozenset({change.bucket}))
    assert trust.judge(notification).refusals == ()

"""S3 events delivered by EventBridge: the agent applies them, `check` walks that chain.

moto 5.2.5 sends S3 events to EventBridge (a bucket with ``EventBridgeConfiguration``) and
its rules deliver to SQS targets, so "bucket -> rule -> this queue" runs end to end here,
in moto's shape of the event (``time`` rewritten to ISO 8601 by the SQS target, ``eTag``,
``reason`` ``ObjectCreated``, one fixed ``sequencer``). Its rules do not deliver to SNS
targets: for "bucket -> rule -> topic -> queues" (infra's EventSource=eventbridge) the test
publishes AWS's own shape of the event (tests/events/aws-eventbridge-*.json) to the topic,
as the rule would.

moto stores and acts on a bucket's ``EventBridgeConfiguration`` but leaves it out of
GetBucketNotificationConfiguration; ``check`` runs through a proxy (tests/faultproxy.py,
``rewrite``) that puts it back, as AWS answers.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import Agent, queue_depth, render_config
from conftest import run_s3pull as s3pull
from faultproxy import FaultProxy, Rule
from s3pull.emulator import Pipeline, client, create_pipeline

pytestmark = pytest.mark.moto_only("LocalStack here runs S3, SNS and SQS only: no EventBridge")

EVENTS = Path(__file__).parent / "events"
DETAIL_TYPES = ["Object Created", "Object Deleted", "Object Restore Completed"]


def eventbridge_pipeline(
    endpoint: str, target: str, detail_types: list[str] = DETAIL_TYPES
) -> tuple[Pipeline, str]:
    """A pipeline whose bucket sends to EventBridge instead of the topic, and a rule for
    it whose target is the queue itself or the topic; returns it and the rule's ARN, with
    the policies infra/README.md gives (only that rule may send or publish)."""
    pipeline = create_pipeline(endpoint, f"eb-{uuid.uuid4().hex[:12]}", max_receive_count=2)
    s3, sns, sqs, events = (client(endpoint, s) for s in ("s3", "sns", "sqs", "events"))
    s3.put_bucket_notification_configuration(
        Bucket=pipeline.bucket, NotificationConfiguration={"EventBridgeConfiguration": {}}
    )
    pattern = {
        "source": ["aws.s3"],
        "detail-type": detail_types,
        "detail": {"bucket": {"name": [pipeline.bucket]}},
    }
    rule_arn = events.put_rule(Name=pipeline.bucket, EventPattern=json.dumps(pattern))["RuleArn"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=pipeline.queue_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    if target == "queue":
        arn, service, resource, action = queue_arn, "events", queue_arn, "sqs:SendMessage"
        policy_of = lambda text: sqs.set_queue_attributes(  # noqa: E731
            QueueUrl=pipeline.queue_url, Attributes={"Policy": text}
        )
    else:
        arn, service, resource, action = (
            pipeline.topic_arn,
            "events",
            pipeline.topic_arn,
            "sns:Publish",
        )
        policy_of = lambda text: sns.set_topic_attributes(  # noqa: E731
            TopicArn=pipeline.topic_arn, AttributeName="Policy", AttributeValue=text
        )
    policy_of(
        json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": {"Service": f"{service}.amazonaws.com"},
                        "Action": action,
                        "Resource": resource,
                        "Condition": {"ArnEquals": {"aws:SourceArn": rule_arn}},
                    }
                ],
            }
        )
    )
    events.put_targets(Rule=pipeline.bucket, Targets=[{"Id": "s3pull", "Arn": arn}])
    return pipeline, rule_arn


@pytest.fixture
def aws_like(moto_endpoint: str) -> Iterator[str]:
    """moto's endpoint behind a proxy whose GetBucketNotificationConfiguration answers show
    EventBridgeConfiguration as AWS's do (see the module docstring); for ``check``."""
    with FaultProxy(moto_endpoint) as proxy:
        proxy.add(
            Rule(
                "rewrite",
                service="s3",
                operation="GETBucket",
                # moto answers an empty configuration, self-closed
                old=b'2006-03-01/"/>',
                new=b'2006-03-01/"><EventBridgeConfiguration></EventBridgeConfiguration>'
                b"</NotificationConfiguration>",
            )
        )
        yield proxy.url


def check(tmp_path: Path, pipeline: Pipeline, endpoint: str, **mirror: Any) -> Any:
    """`s3pull check` on ``endpoint`` (the proxy), for a mirror of ``pipeline``."""
    through = dataclasses.replace(pipeline, endpoint=endpoint)
    config = write_config(tmp_path, through, "check.toml", **mirror)
    return s3pull("check", "--config", str(config))


def write_config(
    tmp_path: Path, pipeline: Pipeline, name: str = "s3pull.toml", **mirror: Any
) -> Path:
    config = tmp_path / name
    table = {
        "name": "data",
        "bucket": pipeline.bucket,
        "prefix": "data/",
        "directory": tmp_path / "mirror",
        **mirror,
    }
    config.write_text(render_config(pipeline, tmp_path / "state", [table]))
    return config


def aws_event(pipeline: Pipeline, name: str, key: str) -> str:
    event = json.loads((EVENTS / name).read_text())
    event["resources"] = [f"arn:aws:s3:::{pipeline.bucket}"]
    event["detail"]["bucket"]["name"] = pipeline.bucket
    event["detail"]["object"]["key"] = key
    for field in ("etag", "size", "sequencer", "version-id"):
        event["detail"]["object"].pop(field, None)  # S3 is the witness, not the event
    return json.dumps(event)


def test_bucket_to_rule_to_queue_end_to_end(
    tmp_path: Path,
    moto_endpoint: str,
    aws_like: str,
    s3: Any,
    start_agent: Callable[..., Agent],
) -> None:
    pipeline, _rule = eventbridge_pipeline(moto_endpoint, "queue")
    config = write_config(tmp_path, pipeline)
    walked = check(tmp_path, pipeline, aws_like)
    assert walked.returncode == 0, walked.stdout + walked.stderr
    assert f"bucket {pipeline.bucket} sends its events to EventBridge" in walked.stdout
    assert f"queue policy lets rule {pipeline.bucket} send" in walked.stdout

    agent = start_agent(config)
    agent.wait_ready()
    key = "data/a b/m\u00fcller+100%.txt"  # EventBridge sends it as it is
    s3.put_object(Bucket=pipeline.bucket, Key=key, Body=b"hello")
    agent.wait_for_log(f"data: downloaded {key} (ObjectCreated:")
    local = tmp_path / "mirror" / "a b" / "m\u00fcller+100%.txt"
    assert local.read_bytes() == b"hello"
    s3.delete_object(Bucket=pipeline.bucket, Key=key)
    agent.wait_for_log(f"data: deleted {key} (ObjectRemoved:Delete")
    assert not local.exists()
    assert queue_depth(pipeline, pipeline.dead_letter_url) == 0
    assert agent.stop() == 0


def test_bucket_to_rule_to_topic_with_aws_shaped_events(
    tmp_path: Path,
    moto_endpoint: str,
    aws_like: str,
    s3: Any,
    start_agent: Callable[..., Agent],
) -> None:
    pipeline, _rule = eventbridge_pipeline(moto_endpoint, "topic")
    config = write_config(tmp_path, pipeline)
    walked = check(tmp_path, pipeline, aws_like)
    assert walked.returncode == 0, walked.stdout + walked.stderr
    assert f"topic policy lets rule {pipeline.bucket} publish" in walked.stdout
    assert "(raw delivery)" in walked.stdout

    agent = start_agent(config)
    agent.wait_ready()
    sns = client(moto_endpoint, "sns")
    key = "data/q3 100%25+\u00fcber.csv"
    s3.put_object(Bucket=pipeline.bucket, Key=key, Body=b"report")  # no event: EventBridge mode
    sns.publish(
        TopicArn=pipeline.topic_arn,
        Message=aws_event(pipeline, "aws-eventbridge-object-created.json", key),
    )
    agent.wait_for_log(f"data: downloaded {key} (ObjectCreated:Put")
    assert (tmp_path / "mirror" / "q3 100%25+\u00fcber.csv").read_bytes() == b"report"

    # A forged source is refused and acknowledged, never applied.
    forged = json.loads(aws_event(pipeline, "aws-eventbridge-object-deleted.json", key))
    forged["source"] = "acme.forged"
    sns.publish(TopicArn=pipeline.topic_arn, Message=json.dumps(forged))
    agent.wait_for_log("source 'acme.forged' is not aws.s3")
    s3.delete_object(Bucket=pipeline.bucket, Key=key)
    sns.publish(
        TopicArn=pipeline.topic_arn,
        Message=aws_event(pipeline, "aws-eventbridge-object-deleted.json", key),
    )
    agent.wait_for_log(f"data: deleted {key} (ObjectRemoved:DeleteMarkerCreated")
    assert queue_depth(pipeline, pipeline.dead_letter_url) == 0
    assert agent.stop() == 0


@pytest.mark.parametrize("target", ["queue", "topic"])
def test_check_names_what_the_eventbridge_chain_lacks(
    tmp_path: Path, moto_endpoint: str, aws_like: str, target: str
) -> None:
    # A rule without Object Deleted: deletions would never arrive.
    pipeline, _rule = eventbridge_pipeline(moto_endpoint, target, ["Object Created"])
    result = check(tmp_path, pipeline, aws_like)
    assert result.returncode == 1
    assert f"rule {pipeline.bucket} does not let through Object Deleted" in result.stdout

    # archived = "restore" needs Object Restore Completed too.
    pipeline, _rule = eventbridge_pipeline(moto_endpoint, target, DETAIL_TYPES[:2])
    result = check(tmp_path, pipeline, aws_like, archived="restore")
    assert result.returncode == 1
    assert "does not let through Object Restore Completed" in result.stdout

    # A policy that does not let the rule send or publish.
    pipeline, _rule = eventbridge_pipeline(moto_endpoint, target)
    if target == "queue":
        client(moto_endpoint, "sqs").set_queue_attributes(
            QueueUrl=pipeline.queue_url, Attributes={"Policy": ""}
        )
    else:
        client(moto_endpoint, "sns").set_topic_attributes(
            TopicArn=pipeline.topic_arn, AttributeName="Policy", AttributeValue="{}"
        )
    result = check(tmp_path, pipeline, aws_like)
    assert result.returncode == 1
    assert "does not let EventBridge rule arn:aws:events:" in result.stdout

    # No rule at all.
    pipeline, _rule = eventbridge_pipeline(moto_endpoint, target)
    events = client(moto_endpoint, "events")
    events.remove_targets(Rule=pipeline.bucket, Ids=["s3pull"])
    events.delete_rule(Name=pipeline.bucket)
    result = check(tmp_path, pipeline, aws_like)
    assert result.returncode == 1
    assert "no rule on the default event bus matches its events" in result.stdout


def test_check_wants_restore_completed_in_the_notification_for_restore(
    tmp_path: Path, moto_endpoint: str
) -> None:
    pipeline = create_pipeline(moto_endpoint, f"eb-{uuid.uuid4().hex[:12]}", max_receive_count=2)
    client(moto_endpoint, "s3").put_bucket_notification_configuration(
        Bucket=pipeline.bucket,
        NotificationConfiguration={
            "TopicConfigurations": [
                {
                    "TopicArn": pipeline.topic_arn,
                    "Events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"],
                }
            ]
        },
    )
    skip = s3pull("check", "--config", str(write_config(tmp_path, pipeline)))
    assert skip.returncode == 0, skip.stdout
    restore = s3pull("check", "--config", str(write_config(tmp_path, pipeline, archived="restore")))
    assert restore.returncode == 1
    assert (
        'does not include s3:ObjectRestore:Completed, but a mirror of it has archived = "restore"'
        in (restore.stdout)
    )

"""The README's recipe for a fixed queue (`[queue] url`), step by step as boto3 calls that
match its AWS CLI commands one for one, against the moto server: then `s3pull check` finds
every link holding and an agent applies an upload. With raw delivery, as the recipe
says, and without it (SNS envelopes, judged against `accept_topics`)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from conftest import Agent, render_config, run_s3pull, wait_until
from s3pull.emulator import NOTIFIED_EVENTS, Pipeline, client, topic_policy

MAX_RECEIVE_COUNT = 5


def bucket_notifying_a_topic(endpoint: str, name: str) -> str:
    """What the recipe starts from (infra/ or infra/README.md sets it up): a bucket whose
    notifications go to a topic S3 may publish to. Returns the topic's ARN."""
    s3, sns = client(endpoint, "s3"), client(endpoint, "sns")
    s3.create_bucket(Bucket=name)
    topic = str(sns.create_topic(Name=name)["TopicArn"])
    sns.set_topic_attributes(
        TopicArn=topic, AttributeName="Policy", AttributeValue=topic_policy(topic, name)
    )
    s3.put_bucket_notification_configuration(
        Bucket=name,
        NotificationConfiguration={
            "TopicConfigurations": [{"TopicArn": topic, "Events": NOTIFIED_EVENTS}]
        },
    )
    return topic


def queue_arn(sqs: Any, url: str) -> str:
    # aws sqs get-queue-attributes --attribute-names QueueArn --query Attributes.QueueArn
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
    return str(attributes["Attributes"]["QueueArn"])


def fixed_queue(endpoint: str, topic: str, name: str, *, raw_delivery: bool) -> Pipeline:
    """The recipe's four steps."""
    sqs, sns = client(endpoint, "sqs"), client(endpoint, "sns")
    # 1. aws sqs create-queue --queue-name "$NAME-dlq" --attributes MessageRetentionPeriod=...
    dlq_url = sqs.create_queue(
        QueueName=f"{name}-dlq",
        Attributes={"MessageRetentionPeriod": "1209600", "SqsManagedSseEnabled": "true"},
    )["QueueUrl"]
    # 2. aws sqs create-queue --queue-name "$NAME" --attributes file://queue.json
    url = sqs.create_queue(
        QueueName=name,
        Attributes={
            "MessageRetentionPeriod": "345600",
            "VisibilityTimeout": "60",
            "SqsManagedSseEnabled": "true",
            "RedrivePolicy": json.dumps(
                {"deadLetterTargetArn": queue_arn(sqs, dlq_url), "maxReceiveCount": 5}
            ),
        },
    )["QueueUrl"]
    arn = queue_arn(sqs, url)
    # 3. aws sqs set-queue-attributes --queue-url "$QUEUE_URL" --attributes file://queue-policy.json
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "sns.amazonaws.com"},
                "Action": "sqs:SendMessage",
                "Resource": arn,
                "Condition": {"ArnEquals": {"aws:SourceArn": topic}},
            }
        ],
    }
    sqs.set_queue_attributes(QueueUrl=url, Attributes={"Policy": json.dumps(policy)})
    # 4. aws sns subscribe --protocol sqs --notification-endpoint "$QUEUE_ARN"
    #      --attributes RawMessageDelivery=true
    sns.subscribe(
        TopicArn=topic,
        Protocol="sqs",
        Endpoint=arn,
        Attributes={"RawMessageDelivery": "true" if raw_delivery else "false"},
    )
    return Pipeline(endpoint, name, topic, url, dlq_url, MAX_RECEIVE_COUNT)


@pytest.mark.parametrize("raw_delivery", [True, False], ids=["raw", "sns-envelope"])
def test_the_readme_recipe_for_a_fixed_queue_passes_check_and_carries_uploads(
    moto_endpoint: str, tmp_path: Path, raw_delivery: bool
) -> None:
    name = f"r-{uuid.uuid4().hex[:16]}"
    topic = bucket_notifying_a_topic(moto_endpoint, name)
    queue = fixed_queue(moto_endpoint, topic, name, raw_delivery=raw_delivery)

    # The configuration the recipe asks for; the timings stay the recipe's (60 s).
    config = tmp_path / "s3pull.toml"
    mirror = {"name": "web", "bucket": name, "prefix": "web/", "directory": tmp_path / "web"}
    settings = {
        "url": queue.queue_url,
        "accept_topics": [topic],
        "max_receive_count": MAX_RECEIVE_COUNT,
        "visibility_timeout": 60,
    }
    config.write_text(render_config(queue, tmp_path / "state", [mirror], queue=settings))

    check = run_s3pull("check", "--config", str(config))
    assert check.returncode == 0, check.stdout + check.stderr
    assert "every link holds" in check.stdout
    assert f"dead-letters after {MAX_RECEIVE_COUNT} receive(s), as configured" in check.stdout

    agent = Agent(config, tmp_path / "agent.log")
    try:
        agent.wait_ready()
        client(moto_endpoint, "s3").put_object(
            Bucket=name, Key="web/index.html", Body=b"<h1>web</h1>\n"
        )
        landed = tmp_path / "web" / "index.html"
        wait_until(
            lambda: landed.exists() and landed.read_bytes() == b"<h1>web</h1>\n",
            what="the upload on disk",
        )
        assert "does not accept" not in agent.log  # the topic was judged and accepted
    finally:
        assert agent.stop() == 0, agent.log

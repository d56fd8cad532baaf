"""AWS wiring the emulator helper does not cover: another queue on an existing topic."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["add_queue"]


def add_queue(sqs: Any, sns: Any, topic_arn: str, name: str) -> str:
    """Queue ``name`` subscribed to ``topic_arn`` with raw delivery, wired the way
    ``s3pull.emulator.create_pipeline`` wires its own (a policy letting the topic send).

    The bench gives every ``s3pull run`` it starts a queue of its own: a stopped agent's
    long poll lingers in moto for up to 20 s and could take the next agent's message.
    """
    url: str = sqs.create_queue(QueueName=name)["QueueUrl"]
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
    arn = attributes["Attributes"]["QueueArn"]
    policy: dict[str, Any] = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "sns.amazonaws.com"},
                "Action": "sqs:SendMessage",
                "Resource": arn,
                "Condition": {"ArnEquals": {"aws:SourceArn": topic_arn}},
            }
        ],
    }
    sqs.set_queue_attributes(QueueUrl=url, Attributes={"Policy": json.dumps(policy)})
    sns.subscribe(
        TopicArn=topic_arn,
        Protocol="sqs",
        Endpoint=arn,
        Attributes={"RawMessageDelivery": "true"},
    )
    return url

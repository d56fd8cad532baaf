"""A local AWS for the demo and the tests: a moto server on loopback, wired the way
production is (bucket notifications -> SNS topic -> SQS queue with a dead-letter queue).

Needs the ``demo`` extra (moto); never imported by the daemon itself.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import boto3

from s3pull.provision import queue_policy

__all__ = [
    "DUMMY_CREDENTIALS",
    "Pipeline",
    "create_pipeline",
    "moto_server",
    "subscribe_queue",
]

DUMMY_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}

# As infra/s3pull.yaml sets them up (moto never sends ObjectRestore:Completed itself).
NOTIFIED_EVENTS = [
    "s3:ObjectCreated:*",
    "s3:ObjectRemoved:*",
    "s3:LifecycleExpiration:*",
    "s3:ObjectRestore:Completed",
]


@contextmanager
def moto_server() -> Iterator[str]:
    """Start a moto server on a free loopback port; yield its endpoint URL."""
    from moto.server import ThreadedMotoServer

    # werkzeug logs every request at INFO, which would drown the demo's own output.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)

    for name, value in DUMMY_CREDENTIALS.items():
        os.environ.setdefault(name, value)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def client(endpoint: str, service: str) -> Any:
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name=DUMMY_CREDENTIALS["AWS_REGION"],
        aws_access_key_id=DUMMY_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=DUMMY_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )


@dataclass(frozen=True, slots=True)
class Pipeline:
    endpoint: str
    bucket: str
    topic_arn: str
    queue_url: str
    dead_letter_url: str
    max_receive_count: int = 5  # the queue's redrive: a config for it should say the same


def create_pipeline(
    endpoint: str, name: str, *, raw_delivery: bool = True, max_receive_count: int = 5
) -> Pipeline:
    """Bucket ``name`` notifying topic ``name``, fanned out to queue ``name``."""
    s3, sns, sqs = (client(endpoint, service) for service in ("s3", "sns", "sqs"))
    s3.create_bucket(Bucket=name)
    topic_arn = sns.create_topic(Name=name)["TopicArn"]
    sns.set_topic_attributes(
        TopicArn=topic_arn, AttributeName="Policy", AttributeValue=topic_policy(topic_arn, name)
    )
    dead_letter_url = sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
    dead_letter_arn = _queue_arn(sqs, dead_letter_url)
    queue_url = sqs.create_queue(
        QueueName=name,
        Attributes={
            "RedrivePolicy": json.dumps(
                {"deadLetterTargetArn": dead_letter_arn, "maxReceiveCount": max_receive_count}
            )
        },
    )["QueueUrl"]
    subscribe_queue(sqs, sns, topic_arn, queue_url, raw_delivery=raw_delivery)
    s3.put_bucket_notification_configuration(
        Bucket=name,
        NotificationConfiguration={
            "TopicConfigurations": [{"TopicArn": topic_arn, "Events": NOTIFIED_EVENTS}]
        },
    )
    return Pipeline(endpoint, name, topic_arn, queue_url, dead_letter_url, max_receive_count)


def subscribe_queue(
    sqs: Any, sns: Any, topic_arn: str, queue_url: str, *, raw_delivery: bool = True
) -> None:
    """Subscribe an existing queue to ``topic_arn`` the way ``s3pull provision`` does:
    the same queue policy (only that topic may send), raw delivery unless told not to."""
    queue_arn = _queue_arn(sqs, queue_url)
    sqs.set_queue_attributes(
        QueueUrl=queue_url, Attributes={"Policy": queue_policy(queue_arn, topic_arn)}
    )
    sns.subscribe(
        TopicArn=topic_arn,
        Protocol="sqs",
        Endpoint=queue_arn,
        Attributes={"RawMessageDelivery": "true" if raw_delivery else "false"},
    )


def topic_policy(topic_arn: str, bucket: str) -> str:
    """S3 may publish to the topic, for this bucket only (as infra/ sets it up)."""
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"Service": "s3.amazonaws.com"},
                    "Action": "sns:Publish",
                    "Resource": topic_arn,
                    "Condition": {"ArnLike": {"aws:SourceArn": f"arn:aws:s3:::{bucket}"}},
                }
            ],
        }
    )


def _queue_arn(sqs: Any, url: str) -> str:
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
    return str(attributes["Attributes"]["QueueArn"])

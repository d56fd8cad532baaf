"""This server's queue: create it (idempotently), keep it alive, remove it; and clean up
after servers that are gone.

Per server: a queue fed by the SNS topic with raw message delivery, a dead-letter queue
behind it, a queue policy letting only that topic send, SSE, and tags naming the instance
and a heartbeat time. No SNS filter policy (200 per topic): routing stays in the agent.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from botocore.exceptions import ClientError

from s3pull.aws import error_code
from s3pull.config import QueueConfig

__all__ = [
    "DEAD_LETTER_SUFFIX",
    "HEARTBEAT_TAG",
    "INSTANCE_TAG",
    "Orphan",
    "OwnQueue",
    "ProvisionedQueue",
    "Removed",
    "dangling_subscriptions",
    "deprovision",
    "find_orphans",
    "instances_alive",
    "is_missing_queue",
    "missing_queue_advice",
    "provision",
]

log = logging.getLogger(__name__)

INSTANCE_TAG: Final = "s3pull:instance-id"
HEARTBEAT_TAG: Final = "s3pull:heartbeat"
DEAD_LETTER_SUFFIX: Final = "-dlq"
# SQS defaults to 4 days; the dead-letter queue keeps its evidence for the maximum, and
# must keep it longer than the source queue (a redriven message keeps its first
# enqueue time).
QUEUE_RETENTION_SECONDS: Final = 4 * 24 * 3600
DEAD_LETTER_RETENTION_SECONDS: Final = 14 * 24 * 3600
_MISSING_QUEUE_CODES: Final = ("AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist")


def is_missing_queue(exc: BaseException) -> bool:
    return isinstance(exc, ClientError) and error_code(exc) in _MISSING_QUEUE_CODES


def missing_queue_advice(url: str, region: str | None, setting: str, config_path: object) -> str:
    """What to tell an operator whose configured queue SQS does not know. A queue lives
    in one region, so a right URL with a wrong region looks exactly like a wrong URL:
    name both settings."""
    return (
        f"queue {url} does not exist in region {region or '(none)'}: check {setting}"
        f" and [aws] region in {config_path}"
    )


@dataclass(frozen=True, slots=True)
class ProvisionedQueue:
    queue_url: str
    queue_arn: str
    dead_letter_url: str
    subscription_arn: str


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def queue_policy(queue_arn: str, topic_arn: str) -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "s3pull-topic-may-send",
                    "Effect": "Allow",
                    "Principal": {"Service": "sns.amazonaws.com"},
                    "Action": "sqs:SendMessage",
                    "Resource": queue_arn,
                    "Condition": {"ArnEquals": {"aws:SourceArn": topic_arn}},
                }
            ],
        }
    )


async def _ensure_queue(
    sqs: Any, name: str, attributes: dict[str, str], tags: dict[str, str]
) -> tuple[str, str]:
    """Create the queue, or bring an existing one to these attributes; (url, arn).

    A new queue is tagged in CreateQueue itself: the role (infra/s3pull.yaml) lets a
    server create only queues tagged with its own instance id, and change only those."""
    try:
        url = (await sqs.get_queue_url(QueueName=name))["QueueUrl"]
    except ClientError as exc:
        if not is_missing_queue(exc):
            raise
        # CreateQueue is idempotent only for identical attributes, so an existing queue
        # is updated with SetQueueAttributes instead.
        url = (await sqs.create_queue(QueueName=name, Attributes=attributes, tags=tags))["QueueUrl"]
        log.info("created queue %s", name)
    else:
        await sqs.set_queue_attributes(QueueUrl=url, Attributes=attributes)
    arn = (await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"]))["Attributes"][
        "QueueArn"
    ]
    return url, str(arn)


async def _subscriptions(sns: Any, topic_arn: str) -> AsyncIterator[dict[str, Any]]:
    paginator = sns.get_paginator("list_subscriptions_by_topic")
    async for page in paginator.paginate(TopicArn=topic_arn):
        for subscription in page.get("Subscriptions", ()):
            yield subscription


async def _ensure_subscription(sns: Any, topic_arn: str, queue_arn: str) -> str:
    async for subscription in _subscriptions(sns, topic_arn):
        if subscription.get("Endpoint") == queue_arn and subscription.get("Protocol") == "sqs":
            arn = str(subscription["SubscriptionArn"])
            # Read first: the servers' role may not SetSubscriptionAttributes (it cannot be
            # narrowed to one subscription), and a subscription made here is raw already.
            attributes = (await sns.get_subscription_attributes(SubscriptionArn=arn))["Attributes"]
            if attributes.get("RawMessageDelivery") != "true":
                await sns.set_subscription_attributes(
                    SubscriptionArn=arn, AttributeName="RawMessageDelivery", AttributeValue="true"
                )
            return arn
    response = await sns.subscribe(
        TopicArn=topic_arn,
        Protocol="sqs",
        Endpoint=queue_arn,
        Attributes={"RawMessageDelivery": "true"},
        ReturnSubscriptionArn=True,
    )
    log.info("subscribed %s to %s", queue_arn, topic_arn)
    return str(response["SubscriptionArn"])


async def provision(
    sqs: Any,
    sns: Any,
    *,
    topic_arn: str,
    queue_name: str,
    instance_id: str,
    visibility_timeout: int,
    max_receive_count: int,
) -> ProvisionedQueue:
    """Create (or repair) this server's queue, dead-letter queue, policy and subscription."""
    tags = {INSTANCE_TAG: instance_id, HEARTBEAT_TAG: _now()}
    dead_letter_url, dead_letter_arn = await _ensure_queue(
        sqs,
        queue_name + DEAD_LETTER_SUFFIX,
        {
            "MessageRetentionPeriod": str(DEAD_LETTER_RETENTION_SECONDS),
            "SqsManagedSseEnabled": "true",
        },
        tags,
    )
    queue_url, queue_arn = await _ensure_queue(
        sqs,
        queue_name,
        {
            "MessageRetentionPeriod": str(QUEUE_RETENTION_SECONDS),
            "VisibilityTimeout": str(visibility_timeout),
            "SqsManagedSseEnabled": "true",
            "RedrivePolicy": json.dumps(
                {"deadLetterTargetArn": dead_letter_arn, "maxReceiveCount": max_receive_count}
            ),
        },
        tags,
    )
    # The policy names the queue's own ARN, so it can only be set once the queue exists.
    await sqs.set_queue_attributes(
        QueueUrl=queue_url, Attributes={"Policy": queue_policy(queue_arn, topic_arn)}
    )
    for url in (queue_url, dead_letter_url):
        await sqs.tag_queue(QueueUrl=url, Tags=tags)
    subscription_arn = await _ensure_subscription(sns, topic_arn, queue_arn)
    return ProvisionedQueue(queue_url, queue_arn, dead_letter_url, subscription_arn)


async def _delete_queue(sqs: Any, name: str) -> bool:
    try:
        url = (await sqs.get_queue_url(QueueName=name))["QueueUrl"]
        await sqs.delete_queue(QueueUrl=url)
    except ClientError as exc:
        if is_missing_queue(exc):
            return False
        raise
    log.info("deleted queue %s", name)
    return True


async def _unsubscribe_queue(sns: Any, topic_arn: str, queue_arn: str) -> int:
    removed = 0
    async for subscription in _subscriptions(sns, topic_arn):
        if subscription.get("Endpoint") == queue_arn:
            await sns.unsubscribe(SubscriptionArn=subscription["SubscriptionArn"])
            log.info("unsubscribed %s from %s", queue_arn, topic_arn)
            removed += 1
    return removed


def _queue_arn(topic_arn: str, queue_name: str) -> str:
    """A queue's ARN without asking SQS (it may be gone): same partition, region, account
    as the topic, which is where provisioning puts it."""
    partition, service, region, account = topic_arn.split(":")[1:5]
    del service
    return f"arn:{partition}:sqs:{region}:{account}:{queue_name}"


@dataclass(frozen=True, slots=True)
class Removed:
    """What a deprovision found of each part: True removed now, False already gone;
    ``subscriptions`` is None when the role may not unsubscribe (left for gc)."""

    subscriptions: int | None
    queue: bool
    dead_letter_queue: bool


async def deprovision(sqs: Any, sns: Any, *, topic_arn: str, queue_name: str) -> Removed:
    """Remove this server's subscription, queue and dead-letter queue. Idempotent.

    The servers' role (infra/s3pull.yaml) has no sns:Unsubscribe: IAM cannot narrow it to
    one's own subscription. Refused, the subscription is left to `s3pull gc` (it removes
    subscriptions whose queue is gone) and the queues are deleted all the same."""
    subscriptions: int | None = None
    try:
        subscriptions = await _unsubscribe_queue(sns, topic_arn, _queue_arn(topic_arn, queue_name))
    except ClientError as exc:
        if error_code(exc) not in ("AuthorizationError", "AccessDenied"):
            raise
        log.warning("may not unsubscribe %s (%s): left for s3pull gc", queue_name, error_code(exc))
    return Removed(
        subscriptions,
        await _delete_queue(sqs, queue_name),
        await _delete_queue(sqs, queue_name + DEAD_LETTER_SUFFIX),
    )


# -- gc ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Orphan:
    queue_name: str
    instance_id: str
    reason: str


def _parse_time(value: str) -> datetime | None:
    try:
        return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None


async def instances_alive(ec2: Any, instance_ids: list[str]) -> set[str]:
    """Which of these instances still exist (any state but terminated/shutting-down)."""
    alive: set[str] = set()
    for instance_id in instance_ids:  # one at a time: one unknown id fails a whole call
        try:
            response = await ec2.describe_instances(InstanceIds=[instance_id])
        except ClientError as exc:
            if error_code(exc) in ("InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed"):
                continue
            raise
        for reservation in response.get("Reservations", ()):
            for instance in reservation.get("Instances", ()):
                if instance["State"]["Name"] not in ("terminated", "shutting-down"):
                    alive.add(instance["InstanceId"])
    return alive


async def find_orphans(
    sqs: Any, ec2: Any, *, name_prefix: str, stale_after: timedelta
) -> list[Orphan]:
    """s3pull queues whose instance is gone, or whose heartbeat is older than
    ``stale_after`` (a server that has been away longer than the queue keeps messages
    reconciles from scratch anyway, and re-provisions when it returns)."""
    paginator = sqs.get_paginator("list_queues")
    candidates: list[tuple[str, str, datetime | None]] = []
    async for page in paginator.paginate(QueueNamePrefix=name_prefix):
        for url in page.get("QueueUrls", ()):
            name = url.rsplit("/", 1)[1]
            if name.endswith(DEAD_LETTER_SUFFIX):
                continue  # removed together with its source queue
            tags = (await sqs.list_queue_tags(QueueUrl=url)).get("Tags", {})
            if INSTANCE_TAG not in tags:
                continue  # not provisioned by s3pull: never ours to remove
            candidates.append((name, tags[INSTANCE_TAG], _parse_time(tags.get(HEARTBEAT_TAG, ""))))
    alive = await instances_alive(ec2, sorted({instance for _n, instance, _h in candidates}))
    cutoff = datetime.now(UTC) - stale_after
    orphans = []
    for name, instance_id, heartbeat in candidates:
        if instance_id not in alive:
            orphans.append(Orphan(name, instance_id, "instance no longer exists"))
        elif heartbeat is None or heartbeat < cutoff:
            seen = heartbeat.strftime("%Y-%m-%d %H:%M UTC") if heartbeat else "never"
            orphans.append(Orphan(name, instance_id, f"heartbeat is stale (last {seen})"))
    return orphans


async def dangling_subscriptions(sqs: Any, sns: Any, topic_arn: str, name_prefix: str) -> list[str]:
    """Subscriptions of the topic to s3pull queues that no longer exist."""
    dangling = []
    async for subscription in _subscriptions(sns, topic_arn):
        endpoint = str(subscription.get("Endpoint", ""))
        name = endpoint.rsplit(":", 1)[-1]
        if subscription.get("Protocol") != "sqs" or not name.startswith(name_prefix):
            continue
        try:
            await sqs.get_queue_url(QueueName=name)
        except ClientError as exc:
            if not is_missing_queue(exc):
                raise
            dangling.append(str(subscription["SubscriptionArn"]))
    return dangling


class OwnQueue:
    """This server's queue: the configured ``url``, or one provisioned from ``topic_arn``."""

    def __init__(self, sqs: Any, sns: Any, queue: QueueConfig, instance_id: str | None) -> None:
        self._sqs = sqs
        self._sns = sns
        self._queue = queue
        self._instance_id = instance_id or ""

    @property
    def provisioned(self) -> bool:
        return self._queue.topic_arn is not None

    @property
    def name(self) -> str:
        return self._queue.queue_name(self._instance_id)

    async def ensure(self) -> str:
        """The queue's URL, creating or repairing it first when we own it."""
        if self._queue.topic_arn is None:
            assert self._queue.url is not None
            return self._queue.url
        provisioned = await provision(
            self._sqs,
            self._sns,
            topic_arn=self._queue.topic_arn,
            queue_name=self.name,
            instance_id=self._instance_id,
            visibility_timeout=self._queue.visibility_timeout,
            max_receive_count=self._queue.max_receive_count,
        )
        return provisioned.queue_url

    async def remove(self) -> Removed | None:
        if self._queue.topic_arn is None:
            return None
        return await deprovision(
            self._sqs, self._sns, topic_arn=self._queue.topic_arn, queue_name=self.name
        )

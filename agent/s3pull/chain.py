"""``s3pull check``: walk bucket notification -> topic -> topic policy -> subscription ->
queue policy -> queue, and name the first broken link in plain words. Changes nothing
(``--probe`` publishes one synthetic test event and deletes it when it arrives)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any, Final

from botocore.exceptions import BotoCoreError, ClientError

from s3pull.aws import error_code, open_clients
from s3pull.config import Config
from s3pull.identity import Identity
from s3pull.provision import is_missing_queue

__all__ = ["walk_chain"]

PROBE_WAIT_SECONDS: Final = 20.0
REQUIRED_EVENTS: Final = ("s3:ObjectCreated:", "s3:ObjectRemoved:")


class Broken(Exception):
    """The first link that does not hold, in words an operator can act on."""


@dataclass(frozen=True, slots=True)
class Route:
    """A bucket whose notifications must reach a queue."""

    bucket: str
    queue_url: str
    what: str  # "mirrors" or "trigger orders"


def _say(text: str) -> None:
    print(f"  ok      {text}")


def _covers(events: list[str], wanted: str) -> bool:
    """Does a notification's event list include every event of the family ``wanted``?"""
    return any(event == wanted + "*" or event == "s3:*" for event in events)


def _statements(policy_text: str | None) -> list[dict[str, Any]]:
    if not policy_text:
        return []
    statements = json.loads(policy_text).get("Statement", [])
    return statements if isinstance(statements, list) else [statements]


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _allows(policy_text: str | None, service: str, action: str, source_arn: str) -> bool:
    """Whether an Allow statement lets ``service`` perform ``action``, unconditioned or
    conditioned on ``source_arn`` (wildcards in the condition are taken as matching)."""
    for statement in _statements(policy_text):
        if statement.get("Effect") != "Allow":
            continue
        principal = statement.get("Principal", {})
        services = _as_list(principal.get("Service", [])) if isinstance(principal, dict) else []
        if service not in services and principal != "*":
            continue
        actions = [str(a).lower() for a in _as_list(statement.get("Action", []))]
        prefix = action.split(":")[0].lower()
        if action.lower() not in actions and f"{prefix}:*" not in actions and "*" not in actions:
            continue
        arns = [
            arn
            for condition in statement.get("Condition", {}).values()
            for key, value in condition.items()
            if key.lower() == "aws:sourcearn"
            for arn in _as_list(value)
        ]
        if not arns or any(arn == source_arn or "*" in arn for arn in arns):
            return True
    return False


class ChainWalk:
    def __init__(self, clients: Any, config: Config) -> None:
        self.clients = clients
        self.config = config
        self.topics: list[str] = []

    async def queue(self, url: str) -> tuple[str, str | None]:
        try:
            attributes = (
                await self.clients.sqs.get_queue_attributes(
                    QueueUrl=url, AttributeNames=["QueueArn", "Policy"]
                )
            )["Attributes"]
        except ClientError as exc:
            if is_missing_queue(exc):
                raise Broken(f"queue {url} does not exist") from None
            raise
        _say(f"queue {url} exists")
        return str(attributes["QueueArn"]), attributes.get("Policy")

    async def redrive(self, url: str) -> None:
        """The queue's own redrive policy decides when a message is dead-lettered; with a
        fixed ``url`` the agent never changes it, so ``max_receive_count`` must agree."""
        attributes = (
            await self.clients.sqs.get_queue_attributes(
                QueueUrl=url, AttributeNames=["RedrivePolicy"]
            )
        )["Attributes"]
        redrive = attributes.get("RedrivePolicy")
        if not redrive:
            raise Broken(
                f"queue {url} has no dead-letter queue (RedrivePolicy): a message that keeps"
                " failing is retried until its retention ends, then lost"
            )
        receives = int(json.loads(redrive).get("maxReceiveCount", 0))
        wanted = self.config.queue.max_receive_count
        if receives != wanted:
            fix = (
                "the agent does not change a queue it did not provision: make them agree"
                if self.config.queue.url
                else "the agent sets it at its next start (or run `s3pull provision`)"
            )
            raise Broken(
                f"queue {url} dead-letters a message after {receives} receive(s), but"
                f" [queue] max_receive_count is {wanted} in {self.config.path}; {fix}"
            )
        _say(f"queue {url} dead-letters after {receives} receive(s), as configured")

    async def route(self, route: Route) -> None:
        queue_arn, queue_policy = await self.queue(route.queue_url)
        s3 = self.clients.s3
        try:
            notification = await s3.get_bucket_notification_configuration(Bucket=route.bucket)
        except ClientError as exc:
            if error_code(exc) == "NoSuchBucket":
                raise Broken(f"bucket {route.bucket} ({route.what}) does not exist") from None
            raise
        direct = [
            q for q in notification.get("QueueConfigurations", ()) if q["QueueArn"] == queue_arn
        ]
        if direct:
            self._events(route.bucket, "the queue", direct[0]["Events"])
            if not _allows(
                queue_policy, "s3.amazonaws.com", "sqs:SendMessage", f"arn:aws:s3:::{route.bucket}"
            ):
                raise Broken(f"the policy of queue {queue_arn} does not let S3 send to it")
            _say(f"queue policy lets bucket {route.bucket} send")
            return
        wanted = self.config.queue.topic_arn
        topics = [
            t
            for t in notification.get("TopicConfigurations", ())
            if wanted is None or t["TopicArn"] == wanted
        ]
        if not topics:
            target = f"topic {wanted}" if wanted else "an SNS topic or to this queue"
            raise Broken(f"bucket {route.bucket} ({route.what}) sends no notifications to {target}")
        # A fixed queue may hang off any of the bucket's topics: the one subscribed to it.
        failures: list[Broken] = []
        for topic in topics:
            try:
                await self._topic_to_queue(route, topic, queue_arn, queue_policy)
                return
            except Broken as broken:
                failures.append(broken)
        raise failures[0]

    def _events(self, bucket: str, target: str, events: list[str]) -> None:
        for family in REQUIRED_EVENTS:
            if not _covers(events, family):
                raise Broken(
                    f"bucket {bucket}'s notification to {target} does not include"
                    f" {family}* (it has {', '.join(events)})"
                )
        note = (
            ""
            if _covers(events, "s3:LifecycleExpiration:")
            else ("; note: without s3:LifecycleExpiration:* lifecycle deletions are not mirrored")
        )
        _say(f"bucket {bucket} notifies {target} of {', '.join(events)}{note}")

    async def _topic_to_queue(
        self, route: Route, topic: dict[str, Any], queue_arn: str, queue_policy: str | None
    ) -> None:
        topic_arn = str(topic["TopicArn"])
        self._events(route.bucket, f"topic {topic_arn}", list(topic["Events"]))
        sns = self.clients.sns
        try:
            attributes = (await sns.get_topic_attributes(TopicArn=topic_arn))["Attributes"]
        except ClientError as exc:
            if error_code(exc) in ("NotFound", "NotFoundException"):
                raise Broken(f"topic {topic_arn} does not exist") from None
            raise
        _say(f"topic {topic_arn} exists")
        if not _allows(
            attributes.get("Policy"),
            "s3.amazonaws.com",
            "sns:Publish",
            f"arn:aws:s3:::{route.bucket}",
        ):
            raise Broken(
                f"the policy of topic {topic_arn} does not let S3 (bucket"
                f" {route.bucket}) publish to it"
            )
        _say(f"topic policy lets bucket {route.bucket} publish")
        subscription = await self._subscription(topic_arn, queue_arn)
        raw = (await sns.get_subscription_attributes(SubscriptionArn=subscription))[
            "Attributes"
        ].get("RawMessageDelivery", "false") == "true"
        _say(
            f"topic {topic_arn} is subscribed by queue {queue_arn}"
            + (" (raw delivery)" if raw else " (SNS-wrapped bodies: works; raw is leaner)")
        )
        if not _allows(queue_policy, "sns.amazonaws.com", "sqs:SendMessage", topic_arn):
            raise Broken(
                f"the policy of queue {queue_arn} does not let topic {topic_arn} send to it"
            )
        _say(f"queue policy lets topic {topic_arn} send")
        self.topics.append(topic_arn)

    async def _subscription(self, topic_arn: str, queue_arn: str) -> str:
        paginator = self.clients.sns.get_paginator("list_subscriptions_by_topic")
        async for page in paginator.paginate(TopicArn=topic_arn):
            for subscription in page.get("Subscriptions", ()):
                if subscription.get("Endpoint") == queue_arn:
                    return str(subscription["SubscriptionArn"])
        raise Broken(f"topic {topic_arn} has no subscription for queue {queue_arn}")

    async def probe(self, queue_url: str) -> None:
        """Publish a synthetic test event to the topic and wait for it in the queue."""
        if not self.topics:
            return
        probe_id = f"s3pull-probe-{uuid.uuid4()}"
        body = json.dumps(
            {
                "Service": "Amazon S3",
                "Event": "s3:TestEvent",
                "Time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "Bucket": "s3pull-check",
                "RequestId": probe_id,
            }
        )
        sent = time.monotonic()
        await self.clients.sns.publish(TopicArn=self.topics[0], Message=body)
        sqs = self.clients.sqs
        while time.monotonic() - sent < PROBE_WAIT_SECONDS:
            response = await sqs.receive_message(
                QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=2
            )
            for message in response.get("Messages", ()):
                if probe_id in message.get("Body", ""):
                    await sqs.delete_message(
                        QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"]
                    )
                    _say(f"probe arrived in {time.monotonic() - sent:.1f} s")
                    return
                # Not ours: hand it straight back to the agent.
                await sqs.change_message_visibility(
                    QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
                )
            await asyncio.sleep(0.2)
        raise Broken(
            f"a probe published to {self.topics[0]} did not arrive in the queue within"
            f" {PROBE_WAIT_SECONDS:.0f} s (a running agent may have taken it first:"
            " its log then shows an s3:TestEvent)"
        )


def _routes(config: Config, own_queue_url: str) -> list[Route]:
    routes: dict[tuple[str, str], Route] = {}
    for mirror in config.mirrors:
        routes.setdefault(
            (mirror.bucket, own_queue_url), Route(mirror.bucket, own_queue_url, "mirrors")
        )
    for trigger in config.triggers:
        url = trigger.queue_url or own_queue_url
        routes.setdefault(
            (trigger.bucket, url), Route(trigger.bucket, url, f"trigger {trigger.name}")
        )
    return list(routes.values())


async def walk_chain(config: Config, identity: Identity | None, probe: bool) -> int:
    region = identity.region if identity else None
    print("chain:")
    async with open_clients(config, "s3", "sqs", "sns", region=region) as clients:
        walk = ChainWalk(clients, config)
        try:
            own_url = await _own_queue_url(clients, config, identity)
            for route in _routes(config, own_url):
                await walk.route(route)
            await walk.redrive(own_url)
            if probe:
                await walk.probe(own_url)
        except Broken as broken:
            print(f"  BROKEN  {broken}")
            print(f"first broken link: {broken}")
            return 1
        except (BotoCoreError, ClientError) as exc:
            print(f"  BROKEN  could not ask AWS: {exc}")
            return 1
    print("every link holds")
    return 0


async def _own_queue_url(clients: Any, config: Config, identity: Identity | None) -> str:
    if config.queue.url is not None:
        return config.queue.url
    name = config.queue.queue_name(identity.instance_id if identity else "")
    try:
        return str((await clients.sqs.get_queue_url(QueueName=name))["QueueUrl"])
    except ClientError as exc:
        if is_missing_queue(exc):
            raise Broken(
                f"this server's queue {name} does not exist (run `s3pull provision`"
                " or start the agent)"
            ) from None
        raise

"""``s3pull check``: walk bucket notification -> topic -> topic policy -> subscription ->
queue policy -> queue, and name the first broken link in plain words. Changes nothing
(``--probe`` publishes one synthetic test event and deletes it when it arrives).

A bucket that sends its events to EventBridge instead (``EventBridgeConfiguration``, the
infra template's ``EventSource=eventbridge``) is walked as bucket -> EventBridge rule
(source aws.s3, this bucket, the detail-types) -> its target, the topic (then as above) or
the queue itself, whose policy must let that rule send."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any, Final

from botocore.exceptions import BotoCoreError, ClientError

from s3pull.aws import error_code, open_clients
from s3pull.config import Config, TriggerConfig
from s3pull.identity import Identity
from s3pull.provision import is_missing_queue, missing_queue_advice

__all__ = ["walk_chain"]

PROBE_WAIT_SECONDS: Final = 20.0
REQUIRED_EVENTS: Final = ("s3:ObjectCreated:", "s3:ObjectRemoved:")
# A mirror with archived = "restore" fetches an object when its restore completes.
RESTORE_COMPLETED: Final = "s3:ObjectRestore:Completed"
# "Using EventBridge": the detail-types a rule must let through (and, for restores, one more).
REQUIRED_DETAIL_TYPES: Final = ("Object Created", "Object Deleted")
RESTORE_DETAIL_TYPE: Final = "Object Restore Completed"


class Broken(Exception):
    """The first link that does not hold, in words an operator can act on."""


@dataclass(frozen=True, slots=True)
class Route:
    """A bucket whose notifications must reach a queue."""

    bucket: str
    queue_url: str
    what: str  # "mirrors" or "trigger orders"
    setting: str  # where the queue's URL is configured: "[queue] url", ...
    restore: bool = False  # a mirror of it has archived = "restore": restores must arrive


def _say(text: str) -> None:
    print(f"  ok      {text}")


def _covers(events: list[str], wanted: str) -> bool:
    """Does a notification's event list include every event of the family ``wanted``
    (ending in ':'), or the one event ``wanted``?"""
    family = wanted if wanted.endswith(":") else wanted.rsplit(":", 1)[0] + ":"
    return any(event in (wanted, family + "*", "s3:*") for event in events)


def _pattern_lets_through(pattern: dict[str, Any], bucket: str, detail_type: str) -> bool:
    """Does an EventBridge rule's event pattern match S3's events of ``detail_type`` for
    ``bucket``? Only plain value lists are read (an absent field matches anything); a
    content filter (prefix, anything-but...) is taken as not matching, so check says so
    rather than guessing."""

    def allows(values: Any, value: str) -> bool:
        return values is None or (isinstance(values, list) and value in values)

    detail = pattern.get("detail", {})
    bucket_filter = detail.get("bucket", {}) if isinstance(detail, dict) else {}
    names = bucket_filter.get("name") if isinstance(bucket_filter, dict) else None
    return (
        isinstance(pattern.get("source"), list)
        and "aws.s3" in pattern["source"]
        and allows(pattern.get("detail-type"), detail_type)
        and allows(names, bucket)
    )


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
    def __init__(self, clients: Any, config: Config, region: str | None) -> None:
        self.clients = clients
        self.config = config
        self.region = region
        self.topics: list[str] = []

    async def queue(self, url: str, setting: str) -> tuple[str, str | None]:
        try:
            attributes = (
                await self.clients.sqs.get_queue_attributes(
                    QueueUrl=url, AttributeNames=["QueueArn", "Policy"]
                )
            )["Attributes"]
        except ClientError as exc:
            if is_missing_queue(exc):
                # The words the daemon's retry line uses for the same mistake.
                advice = missing_queue_advice(url, self.region, setting, self.config.path)
                raise Broken(advice) from None
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
        queue_arn, queue_policy = await self.queue(route.queue_url, route.setting)
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
            self._events(route, "the queue", direct[0]["Events"])
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
            if "EventBridgeConfiguration" in notification:
                await self._eventbridge(route, queue_arn, queue_policy)
                return
            target = f"topic {wanted}" if wanted else "an SNS topic or to this queue"
            raise Broken(
                f"bucket {route.bucket} ({route.what}) sends no notifications to {target},"
                " and none to EventBridge"
            )
        # A fixed queue may hang off any of the bucket's topics: the one subscribed to it.
        failures: list[Broken] = []
        for topic in topics:
            try:
                await self._topic_to_queue(route, topic, queue_arn, queue_policy)
                return
            except Broken as broken:
                failures.append(broken)
        raise failures[0]

    def _events(self, route: Route, target: str, events: list[str]) -> None:
        bucket = route.bucket
        for family in REQUIRED_EVENTS:
            if not _covers(events, family):
                raise Broken(
                    f"bucket {bucket}'s notification to {target} does not include"
                    f" {family}* (it has {', '.join(events)})"
                )
        if route.restore and not _covers(events, RESTORE_COMPLETED):
            raise Broken(
                f"bucket {bucket}'s notification to {target} does not include"
                f' {RESTORE_COMPLETED}, but a mirror of it has archived = "restore":'
                " restored objects would never be fetched (add it to the notification)"
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
        self._events(route, f"topic {topic_arn}", list(topic["Events"]))
        attributes = await self._topic_attributes(topic_arn)
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
        await self._subscribed(topic_arn, queue_arn, queue_policy)

    async def _topic_attributes(self, topic_arn: str) -> dict[str, Any]:
        sns = self.clients.sns
        try:
            attributes = (await sns.get_topic_attributes(TopicArn=topic_arn))["Attributes"]
        except ClientError as exc:
            if error_code(exc) in ("NotFound", "NotFoundException"):
                raise Broken(f"topic {topic_arn} does not exist") from None
            raise
        _say(f"topic {topic_arn} exists")
        return dict(attributes)

    async def _subscribed(self, topic_arn: str, queue_arn: str, queue_policy: str | None) -> None:
        """The topic -> queue half of the chain: subscription, queue policy."""
        sns = self.clients.sns
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

    async def _eventbridge(self, route: Route, queue_arn: str, queue_policy: str | None) -> None:
        """Bucket -> EventBridge -> a rule for this bucket -> the topic, or the queue."""
        bucket = route.bucket
        _say(f"bucket {bucket} sends its events to EventBridge")
        wanted = [*REQUIRED_DETAIL_TYPES, *((RESTORE_DETAIL_TYPE,) if route.restore else ())]
        topic = self.config.queue.topic_arn
        rules = await self._s3_rules(bucket)
        if not rules:
            raise Broken(
                f"bucket {bucket} ({route.what}) sends to EventBridge, but no rule on the"
                f" default event bus matches its events (source aws.s3, bucket {bucket})"
            )
        problems: list[str] = []
        for rule_arn, name, pattern in rules:
            missing = [t for t in wanted if not _pattern_lets_through(pattern, bucket, t)]
            if missing:
                problems.append(f"rule {name} does not let through {', '.join(missing)}")
                continue
            targets = await self._rule_targets(name)
            if queue_arn in targets:
                _say(f"EventBridge rule {name} sends {', '.join(wanted)} to the queue")
                if not _allows(queue_policy, "events.amazonaws.com", "sqs:SendMessage", rule_arn):
                    raise Broken(
                        f"the policy of queue {queue_arn} does not let EventBridge rule"
                        f" {rule_arn} send to it (events.amazonaws.com, aws:SourceArn)"
                    )
                _say(f"queue policy lets rule {name} send")
                return
            for target in targets:
                if not target.startswith("arn:aws:sns:") or (topic and target != topic):
                    continue
                _say(f"EventBridge rule {name} sends {', '.join(wanted)} to topic {target}")
                policy = (await self._topic_attributes(target)).get("Policy")
                if not _allows(policy, "events.amazonaws.com", "sns:Publish", rule_arn):
                    raise Broken(
                        f"the policy of topic {target} does not let EventBridge rule"
                        f" {rule_arn} publish to it (events.amazonaws.com, aws:SourceArn)"
                    )
                _say(f"topic policy lets rule {name} publish")
                await self._subscribed(target, queue_arn, queue_policy)
                return
            where = f"topic {topic}" if topic else "this queue or an SNS topic"
            problems.append(f"rule {name} does not target {where}")
        raise Broken(f"bucket {bucket} sends to EventBridge, but {'; '.join(problems)}")

    async def _s3_rules(self, bucket: str) -> list[tuple[str, str, dict[str, Any]]]:
        """(ARN, name, pattern) of the default bus's rules that take S3 events of ``bucket``
        (enabled, source aws.s3, the bucket or any)."""
        found: list[tuple[str, str, dict[str, Any]]] = []
        request: dict[str, Any] = {}
        while True:
            page = await self.clients.events.list_rules(**request)
            for rule in page.get("Rules", ()):
                try:
                    pattern = json.loads(rule.get("EventPattern") or "{}")
                except ValueError:
                    continue
                if (
                    rule.get("State") == "ENABLED"
                    and isinstance(pattern, dict)
                    and _pattern_lets_through(pattern, bucket, "Object Created")
                ):
                    found.append((str(rule["Arn"]), str(rule["Name"]), pattern))
            if not page.get("NextToken"):
                return found
            request["NextToken"] = page["NextToken"]

    async def _rule_targets(self, name: str) -> list[str]:
        response = await self.clients.events.list_targets_by_rule(Rule=name)
        return [str(target["Arn"]) for target in response.get("Targets", ())]

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


# A Content-MD5 no body can have with zero bytes (the MD5 of b"x"): S3 authorises a
# PutObject before it reads the body, so the answer says whether we may write, and the
# digest mismatch makes sure nothing is written either way.
_IMPOSSIBLE_MD5: Final = "ndTkYSaMgDT1yFZOFVxnpg=="
_MAY_WRITE: Final = frozenset({"BadDigest", "InvalidDigest"})


async def results_writable(s3: Any, trigger: TriggerConfig) -> None:
    """Whether this server may write ``trigger``'s results, without writing any: a
    PutObject of an empty body whose Content-MD5 cannot match it. AccessDenied means the
    role does not allow it, NoSuchBucket that the bucket is missing; BadDigest means S3
    checked the rights, then refused the body."""
    if trigger.results_location is None:
        return
    bucket, folder = trigger.results_location
    key = f"{folder}.s3pull-check-{uuid.uuid4().hex}"
    try:
        await s3.put_object(Bucket=bucket, Key=key, Body=b"", ContentMD5=_IMPOSSIBLE_MD5)
    except ClientError as exc:
        code = error_code(exc)
        if code in _MAY_WRITE:
            _say(f"trigger {trigger.name}: results may be written to {trigger.results}")
            return
        if code in ("AccessDenied", "403"):
            raise Broken(
                f"trigger {trigger.name}: this server may not write results to"
                f" {trigger.results} (s3:PutObject denied; see the infra parameter"
                " TriggerResults)"
            ) from None
        if code == "NoSuchBucket":
            raise Broken(
                f"trigger {trigger.name}: the results bucket {bucket} does not exist"
            ) from None
        raise
    # S3 took the object after all (an emulator that ignores Content-MD5): remove it.
    await s3.delete_object(Bucket=bucket, Key=key)
    _say(f"trigger {trigger.name}: results may be written to {trigger.results} (probe removed)")


def _routes(config: Config, own_queue_url: str) -> list[Route]:
    routes: dict[tuple[str, str], Route] = {}
    own = "[queue] url" if config.queue.url else f"[queue] name ({own_queue_url})"
    for mirror in config.mirrors:
        restore = any(m.archived == "restore" for m in config.mirrors if m.bucket == mirror.bucket)
        routes.setdefault(
            (mirror.bucket, own_queue_url),
            Route(mirror.bucket, own_queue_url, "mirrors", own, restore),
        )
    for trigger in config.triggers:
        url = trigger.queue_url or own_queue_url
        setting = f"[[trigger]] queue_url (trigger {trigger.name})" if trigger.queue_url else own
        routes.setdefault(
            (trigger.bucket, url), Route(trigger.bucket, url, f"trigger {trigger.name}", setting)
        )
    return list(routes.values())


async def walk_chain(config: Config, identity: Identity | None, probe: bool) -> int:
    region = identity.region if identity else None
    print("chain:")
    async with open_clients(config, "s3", "sqs", "sns", "events", region=region) as clients:
        walk = ChainWalk(clients, config, region or config.aws.region)
        try:
            own_url = await _own_queue_url(clients, config, identity)
            for route in _routes(config, own_url):
                await walk.route(route)
            await walk.redrive(own_url)
            for trigger in config.triggers:
                await results_writable(clients.s3, trigger)
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

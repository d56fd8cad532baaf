"""Where a message may come from: SNS topics, event sources and buckets.

SPEC, "Sources are verified": an SNS-wrapped body is accepted only from the configured
topic (``[queue] topic_arn``); with a fixed ``url``, from the topics in ``[queue]
accept_topics`` or, when that is unset, the topics the queue's own policy lets send (its
``aws:SourceArn`` conditions, read once at start). A record whose ``eventSource`` is not
``aws:s3``, or that names a bucket no mirror or trigger is configured for, is refused.

A raw-delivery body has no envelope and so names no topic: only its records' source and
bucket can be checked. Who may send to the queue at all is the queue policy's business.

An EventBridge event (S3 -> EventBridge rule -> the topic, or -> the queue) is judged the
same way: SNS-wrapped, by its topic; its ``source`` must be ``aws.s3`` and its bucket one we
are configured for (the parser already refused one whose ``resources`` name another
bucket). The body never names the rule that sent it, so a rule sending straight to a queue
is verified where it can be: the queue policy lets only ``events.amazonaws.com`` send, on
the condition ``aws:SourceArn`` = that rule's ARN (infra/README.md; ``check`` reads it).

:class:`Trust` and :func:`policy_topics` are pure; :func:`load_trust` reads the queue
policies (one GetQueueAttributes per queue) and is what the daemon calls at start.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from s3pull.config import Config
from s3pull.events import EVENTBRIDGE_SOURCE, Notification, ObjectChange

__all__ = ["S3_EVENT_SOURCE", "Refusal", "Trust", "Verdict", "load_trust", "policy_topics"]

log = logging.getLogger(__name__)

# "Event message structure": eventSource is "aws:s3" for every S3 notification.
S3_EVENT_SOURCE: Final = "aws:s3"


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why (part of) a message is not acted on. ``change`` is None when the whole message
    is refused (its topic); otherwise it is the refused record's change."""

    reason: str
    change: ObjectChange | None = None

    @property
    def where(self) -> str:
        """What refused it, for the status counters (beside mirror names)."""
        return "source"

    @property
    def key(self) -> str:
        return self.change.key if self.change is not None else ""

    def __str__(self) -> str:
        if self.change is None:
            return self.reason
        change = self.change
        # repr: a key may hold any character, newlines included; one event, one line.
        where = _shown(f"s3://{change.bucket}/{change.key}")
        return f"{where} ({change.event_name}): {self.reason}"


@dataclass(frozen=True, slots=True)
class Verdict:
    """``accepted`` is the message with what was refused taken out; act on it as on any
    parsed message. Each refusal is logged and counted; the message is then deleted like
    any other, since sending it again cannot make it come from elsewhere."""

    accepted: Notification
    refusals: tuple[Refusal, ...]


@dataclass(frozen=True, slots=True)
class Trust:
    """The topics (exact ARNs, or ``*``/``?`` patterns from a queue policy's ``ArnLike``)
    and buckets a message may come from."""

    topics: frozenset[str]
    buckets: frozenset[str]

    @classmethod
    def from_config(cls, config: Config, policy_topics: Iterable[str] = ()) -> Trust:
        """``policy_topics`` (what the queue policies let send) count only for a fixed
        queue URL without ``accept_topics``."""
        queue = config.queue
        if queue.topic_arn is not None:
            topics = frozenset({queue.topic_arn})
        elif queue.accept_topics:
            topics = frozenset(queue.accept_topics)
        else:
            topics = frozenset(policy_topics)
        buckets = {m.bucket for m in config.mirrors} | {t.bucket for t in config.triggers}
        return cls(topics, frozenset(buckets))

    def judge(self, notification: Notification) -> Verdict:
        topic = notification.topic_arn
        if topic is not None and not self._topic_accepted(topic):
            whole = Refusal(f"message from SNS topic {topic}, which this agent does not accept")
            return Verdict(Notification(changes=(), topic_arn=topic), (whole,))
        accepted: list[ObjectChange] = []
        refusals: list[Refusal] = []
        for change in notification.changes:
            if change.delivery == "eventbridge" and change.event_source != EVENTBRIDGE_SOURCE:
                reason = f"source {_shown(change.event_source)} is not {EVENTBRIDGE_SOURCE}"
                refusals.append(Refusal(reason, change))
            elif change.delivery == "notification" and change.event_source != S3_EVENT_SOURCE:
                reason = f"eventSource {_shown(change.event_source)} is not {S3_EVENT_SOURCE}"
                refusals.append(Refusal(reason, change))
            elif change.bucket not in self.buckets:
                reason = f"no mirror or trigger is configured for bucket {change.bucket!r}"
                refusals.append(Refusal(reason, change))
            else:
                accepted.append(change)
        if not refusals:
            return Verdict(notification, ())
        kept = dataclasses.replace(notification, changes=tuple(accepted))
        return Verdict(kept, tuple(refusals))

    def _topic_accepted(self, topic: str) -> bool:
        return topic in self.topics or any(
            _arn_like(pattern).fullmatch(topic) for pattern in self.topics if _is_pattern(pattern)
        )


def policy_topics(policy_text: str | None) -> frozenset[str]:
    """The SNS topics (ARNs or ArnLike patterns) a queue policy lets send messages.

    Only topics named by an ``aws:SourceArn`` condition of an Allow statement for
    ``sqs:SendMessage`` count: a statement without one lets every topic send, which
    verifies nothing, and a policy that is not JSON names nothing.
    """
    try:
        policy = json.loads(policy_text) if policy_text else {}
    except ValueError:
        return frozenset()
    statements = policy.get("Statement", []) if isinstance(policy, dict) else []
    topics: set[str] = set()
    for statement in statements if isinstance(statements, list) else [statements]:
        if not isinstance(statement, dict) or statement.get("Effect") != "Allow":
            continue
        actions = [str(a).lower() for a in _as_list(statement.get("Action", []))]
        if not {"sqs:sendmessage", "sqs:*", "*"} & set(actions):
            continue
        conditions = statement.get("Condition", {})
        for operator, condition in conditions.items() if isinstance(conditions, dict) else ():
            # ArnEquals, ArnLike, StringEquals, StringLike, their IfExists and
            # ForAnyValue: forms; never the negations, which name what may *not* send.
            if "Not" in operator or not isinstance(condition, dict):
                continue
            for name, value in condition.items():
                if name.lower() == "aws:sourcearn":
                    topics.update(v for v in _as_list(value) if isinstance(v, str) and _is_sns(v))
    return frozenset(topics)


async def load_trust(sqs: Any, config: Config, queue_urls: Iterable[str]) -> Trust:
    """The sources to accept while serving ``config`` from ``queue_urls`` (the server's
    own queue and any shared trigger queues). Reads each queue's policy only for a fixed
    queue URL without ``accept_topics``. AWS errors propagate: retry like any start-up
    call."""
    queue = config.queue
    if queue.topic_arn is not None or queue.accept_topics:
        trust = Trust.from_config(config)
    else:
        topics: set[str] = set()
        for url in queue_urls:
            response = await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["Policy"])
            topics |= policy_topics(response.get("Attributes", {}).get("Policy"))
        trust = Trust.from_config(config, topics)
        if not trust.topics:
            log.warning(
                "no queue policy names an SNS topic (aws:SourceArn): every SNS-wrapped"
                " message will be refused; raw-delivery ones are accepted. Set [queue]"
                " accept_topics to name the topics"
            )
    if trust.topics:
        log.info("accepting SNS messages from %s", ", ".join(sorted(trust.topics)))
    return trust


def _shown(text: str) -> str:
    # As errors.UnsafeKey shows keys: repr (escapes control characters), capped.
    return repr(text) if len(text) <= 300 else f"{text[:300]!r}... ({len(text)} characters)"


def _as_list(value: object) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _is_sns(arn: str) -> bool:
    parts = arn.split(":", 5)
    return len(parts) == 6 and parts[0] == "arn" and parts[2] in ("sns", "*")


def _is_pattern(topic: str) -> bool:
    return "*" in topic or "?" in topic


def _arn_like(pattern: str) -> re.Pattern[str]:
    # IAM ArnLike: each colon-separated part is matched on its own, '*' any run of
    # characters and '?' any one character within it.
    parts = (
        "[^:]*" if char == "*" else "[^:]" if char == "?" else re.escape(char) for char in pattern
    )
    return re.compile("".join(parts))

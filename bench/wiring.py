"""AWS wiring the emulator helper does not cover: another queue on an existing topic."""

from __future__ import annotations

from typing import Any

from s3pull.emulator import subscribe_queue

__all__ = ["add_queue"]


def add_queue(sqs: Any, sns: Any, topic_arn: str, name: str) -> str:
    """Queue ``name`` subscribed to ``topic_arn`` with raw delivery, wired the way
    ``s3pull.emulator.create_pipeline`` wires its own (a policy letting the topic send).

    The bench gives every ``s3pull run`` it starts a queue of its own: a stopped agent's
    long poll lingers in moto for up to 20 s and could take the next agent's message.
    """
    url: str = sqs.create_queue(QueueName=name)["QueueUrl"]
    subscribe_queue(sqs, sns, topic_arn, url)
    return url

"""Deleting applied messages: acks that trickle in one by one still leave in batches of
ten (one DeleteMessageBatch per ten changes, not one per change), and nothing acked is
left behind at close. Counted at a proxy in front of a real moto SQS."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import queue_depth, render_config
from faultproxy import FaultProxy
from faults_conftest import through
from s3pull.aws import open_clients
from s3pull.config import parse_config
from s3pull.emulator import Pipeline
from s3pull.inbox import Inbox, Message


@pytest.fixture
def proxy(moto_endpoint: str) -> Iterator[FaultProxy]:
    with FaultProxy(moto_endpoint) as running:
        yield running


def config_text(pipeline: Pipeline, proxy: FaultProxy, tmp_path: Path) -> str:
    mirror = {"name": "m", "bucket": pipeline.bucket, "directory": tmp_path / "m"}
    return render_config(through(pipeline, proxy.url), tmp_path / "state", [mirror])


def empty_queue(sqs: Any) -> str:
    """A queue of the test's own: the pipeline's holds S3's test event."""
    return str(sqs.create_queue(QueueName=f"inbox-{uuid.uuid4().hex[:12]}")["QueueUrl"])


async def receive(inbox: Inbox, count: int) -> list[Message]:
    messages: list[Message] = []
    while len(messages) < count:
        messages += await inbox.receive()
    return messages


async def test_acks_one_at_a_time_are_deleted_in_batches_of_ten(
    sqs: Any, pipeline: Pipeline, proxy: FaultProxy, tmp_path: Path
) -> None:
    queue_url = empty_queue(sqs)
    for index in range(25):
        sqs.send_message(QueueUrl=queue_url, MessageBody=f"change {index}")
    text = config_text(pipeline, proxy, tmp_path)
    async with open_clients(parse_config(text, tmp_path / "s3pull.toml"), "sqs") as clients:
        inbox = Inbox(clients.sqs, queue_url, 1, 30)
        messages = await receive(inbox, 25)
        deleter = asyncio.create_task(inbox.delete_forever())
        for message in messages:  # changes finishing one after another
            inbox.ack(message)
            await asyncio.sleep(0.005)
        inbox.close()
        await deleter
    assert queue_depth(pipeline, queue_url) == 0
    assert proxy.seen("sqs", "DeleteMessageBatch") == 3


async def test_an_ack_just_before_close_is_deleted_in_one_request(
    sqs: Any, pipeline: Pipeline, proxy: FaultProxy, tmp_path: Path
) -> None:
    queue_url = empty_queue(sqs)
    sqs.send_message(QueueUrl=queue_url, MessageBody="last change")
    text = config_text(pipeline, proxy, tmp_path)
    async with open_clients(parse_config(text, tmp_path / "s3pull.toml"), "sqs") as clients:
        inbox = Inbox(clients.sqs, queue_url, 1, 30)
        (message,) = await receive(inbox, 1)
        inbox.ack(message)
        inbox.close()
        await inbox.delete_forever()
    assert queue_depth(pipeline, queue_url) == 0
    assert proxy.seen("sqs", "DeleteMessageBatch") == 1

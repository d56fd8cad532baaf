"""The SQS side: receive by long poll, delete in batches, keep messages invisible while
work runs, and hand messages back.

A message is only ever deleted through ``ack``; everything else lets SQS redeliver it,
and the queue's redrive policy ends a message that keeps failing in the dead-letter queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Final

__all__ = ["MAX_VISIBILITY", "Inbox", "Message"]

log = logging.getLogger(__name__)

MAX_VISIBILITY: Final = 12 * 3600  # SQS caps a message's total invisibility at 12 hours
BATCH: Final = 10  # ReceiveMessage and DeleteMessageBatch take at most 10
# How long a part-filled delete batch waits for more acks. Changes finish one by one, so
# without it nearly every DeleteMessageBatch carried one message: a whole SQS request per
# change, 14% of the agent's CPU under a stream of uploads. The change is applied already;
# only the deletion waits (a redelivery meanwhile would cost one conditional GET).
DELETE_LINGER_SECONDS: Final = 0.2


@dataclass(frozen=True, slots=True)
class Message:
    message_id: str
    receipt_handle: str
    body: str
    receive_count: int
    sent_timestamp_ms: int | None

    @classmethod
    def from_sqs(cls, raw: dict[str, Any]) -> Message:
        attributes = raw.get("Attributes", {})
        sent = attributes.get("SentTimestamp")
        return cls(
            message_id=raw["MessageId"],
            receipt_handle=raw["ReceiptHandle"],
            body=raw.get("Body", ""),
            receive_count=int(attributes.get("ApproximateReceiveCount", "1")),
            sent_timestamp_ms=int(sent) if sent else None,
        )


class Inbox:
    """One SQS queue, used through one shared aiobotocore client."""

    def __init__(self, sqs: Any, queue_url: str, wait_time: int, visibility_timeout: int) -> None:
        self._sqs = sqs
        self.queue_url = queue_url
        self._wait_time = wait_time
        self._visibility = visibility_timeout
        self._to_delete: asyncio.Queue[Message | None] = asyncio.Queue()
        self._closing = False  # close() was called: nothing more to wait for

    async def receive(self, most: int = BATCH) -> list[Message]:
        response = await self._sqs.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=max(1, min(most, BATCH)),
            WaitTimeSeconds=self._wait_time,
            VisibilityTimeout=self._visibility,
            MessageSystemAttributeNames=["ApproximateReceiveCount", "SentTimestamp"],
        )
        return [Message.from_sqs(raw) for raw in response.get("Messages", ())]

    def ack(self, message: Message) -> None:
        """Schedule the message for deletion: its change has been applied."""
        self._to_delete.put_nowait(message)

    def close(self) -> None:
        """No more acks: ``delete_forever`` deletes what is queued, then returns."""
        self._closing = True
        self._to_delete.put_nowait(None)

    async def delete_forever(self) -> None:
        """Delete acknowledged messages in batches of up to ten, as they come, until
        ``close``. Never cancelled mid-batch in normal operation: the daemon closes it
        after the drain and waits for it."""
        closed = False
        while not closed:
            item = await self._to_delete.get()
            if item is not None and not self._closing and self._to_delete.qsize() < BATCH - 1:
                await asyncio.sleep(DELETE_LINGER_SECONDS)
            batch: list[Message] = []
            while item is not None:
                batch.append(item)
                if len(batch) == BATCH or self._to_delete.empty():
                    break
                item = self._to_delete.get_nowait()
            closed = item is None
            if batch:
                await self._delete_batch(batch)

    async def _delete_batch(self, batch: list[Message]) -> None:
        entries = [
            {"Id": str(index), "ReceiptHandle": message.receipt_handle}
            for index, message in enumerate(batch)
        ]
        try:
            response = await self._sqs.delete_message_batch(
                QueueUrl=self.queue_url, Entries=entries
            )
        except Exception as exc:
            # The changes are applied; a redelivery only costs a conditional GET.
            log.warning(
                "could not delete %d applied message(s), they will come back: %s", len(batch), exc
            )
            return
        for failure in response.get("Failed", ()):
            log.warning(
                "could not delete applied message %s: %s",
                batch[int(failure["Id"])].message_id,
                failure.get("Message", failure),
            )

    async def set_visibility(self, message: Message, seconds: int) -> None:
        try:
            await self._sqs.change_message_visibility(
                QueueUrl=self.queue_url,
                ReceiptHandle=message.receipt_handle,
                VisibilityTimeout=max(0, min(seconds, MAX_VISIBILITY)),
            )
        except Exception as exc:
            log.warning("could not change visibility of message %s: %s", message.message_id, exc)

    async def retry_later(self, message: Message) -> None:
        """Hand a failed message back with a delay that grows with each receive."""
        delay = min(self._visibility * 2 ** (message.receive_count - 1), 15 * 60)
        await self.set_visibility(message, delay)

    async def release(self, message: Message) -> None:
        """Hand a message back at once (shutdown without finishing its work)."""
        await self.set_visibility(message, 0)

    @contextlib.asynccontextmanager
    async def kept_invisible(self, message: Message) -> AsyncIterator[None]:
        """While the block runs, extend the message's invisibility at half the timeout."""

        async def heartbeat() -> None:
            interval = max(1.0, self._visibility / 2)
            extended = 0.0
            while extended + self._visibility < MAX_VISIBILITY:
                await asyncio.sleep(interval)
                extended += interval
                await self.set_visibility(message, self._visibility)

        task = asyncio.create_task(heartbeat(), name=f"heartbeat-{message.message_id}")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

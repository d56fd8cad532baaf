"""Applied-through: the time T before which everything that reached this server's queue
has been applied, refused or dead-lettered.

SQS (standard queues) keeps no order, so T is proven, never guessed:

- A long poll that started at R and came back empty proves that no message that reached
  the queue before R was still visible then. So is a queue attribute read at R showing no
  visible and no delayed message (the publisher reads one when no receive came back empty
  since the last publication).
- Every message sent before R was therefore received by this process. Each one received
  is *pending* until it is acknowledged (applied or refused) or reaches its last receive
  (``max_receive_count``) still failing: the redrive policy then moves it to the
  dead-letter queue instead of handing it back.
- So T = min(R, SentTimestamp of every pending message).

A message hidden by a previous process of this agent (one that crashed, or a failure
handed back with a delay) is invisible to an empty receive and unknown to this process:
until an attribute read shows no hidden message but ours, no evidence older than the
longest such hiding (``max(visibility_timeout, 15 min)`` after start) counts.

SentTimestamp is SQS's clock and R the server's: both are NTP time on EC2 (Amazon Time
Sync); ``fleet wait`` allows a few seconds for the difference and for delivery.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

from s3pull.inbox import Message

__all__ = ["LONGEST_RETRY_DELAY", "Watermark"]

LONGEST_RETRY_DELAY: Final = 15 * 60  # inbox.retry_later hides a failed message at most this


class Watermark:
    """Applied-through for one queue, fed by the poll loop and the dispatcher."""

    def __init__(
        self,
        max_receive_count: int,
        visibility_timeout: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._max_receives = max_receive_count
        self._clock = clock
        self._pending: dict[str, float] = {}  # message id -> SentTimestamp (s)
        self._evidence: float | None = None  # latest R proven empty of visible messages
        # Until a previous process's hidden messages are ruled out, evidence before this
        # moment proves nothing.
        self._trusted_after = clock() + max(visibility_timeout, LONGEST_RETRY_DELAY)
        self._received_at: float | None = None  # when the latest message was received
        self.handled = 0  # messages finished; the publisher compares it

    # -- evidence --------------------------------------------------------------------

    def now(self) -> float:
        return self._clock()

    def queue_was_empty(self, at: float) -> None:
        """Nothing was visible in the queue at ``at`` (an empty long poll started then,
        or the queue's attributes said so)."""
        if at >= self._trusted_after and (self._evidence is None or at > self._evidence):
            self._evidence = at

    def hidden_are_ours(self, hidden: int) -> None:
        """The queue reported ``hidden`` messages not visible: if no more than ours, no
        previous process left any behind, and every empty poll counts from now on."""
        if hidden <= len(self._pending):
            self._trusted_after = 0.0

    # -- messages ------------------------------------------------------------------

    def received(self, message: Message) -> None:
        self._received_at = self._clock()
        sent = message.sent_timestamp_ms
        self._pending.setdefault(
            message.message_id, sent / 1000 if sent is not None else self._clock()
        )

    def finished(self, message: Message, acknowledged: bool) -> None:
        """The message's handling ended: acknowledged (applied or refused), or failed
        (it stays pending unless this was its last receive before the dead-letter
        queue)."""
        if acknowledged or message.receive_count >= self._max_receives:
            self._pending.pop(message.message_id, None)
            self.handled += 1

    # -- the answer ----------------------------------------------------------------

    def needs_proof(self) -> bool:
        """No empty poll since the latest message was received: only a look at the
        queue can move applied-through past it."""
        return self._evidence is None or (
            self._received_at is not None and self._evidence < self._received_at
        )

    @property
    def pending(self) -> int:
        return len(self._pending)

    def through(self) -> float | None:
        """Applied-through as a Unix time, or None while nothing is proven yet."""
        if self._evidence is None:
            return None
        return min(self._evidence, min(self._pending.values(), default=self._evidence))

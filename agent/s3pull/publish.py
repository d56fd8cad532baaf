"""Publish this agent's state on its own queue's tags, at a bounded rate.

One TagQueue request carries everything (version, phase, applied-through, last error and
the heartbeat ``gc`` reads). It is sent
- when something an operator would want to know changed: the phase (or what is
  failing), the last error, or messages were finished (applied-through may move): at
  most once per ``interval`` (30 s) on average, with a burst of two (so that start-up's
  "bootstrapping" is followed at once by "in sync"): at most two publications a minute
  while changes flow, each preceded by one GetQueueAttributes when no long poll came
  back empty since the last change (the proof applied-through needs, see ``watermark``);
- once an hour when nothing changed: the heartbeat, no request more than before;
- once at a stop (phase ``stopped``).
An idle agent's long polls move applied-through without a publication: ``fleet`` reads
the queue's own counters to see that nothing waits.

SQS allows 30 tagging requests a second per account: at one per 30 s per server, a
fleet of 900 servers all receiving changes at once reaches it. A throttled publication
is a transient error like any other: logged, and tried again at the next one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final

import s3pull
from s3pull.aws import TRANSIENT_ERRORS
from s3pull.statetags import AgentState
from s3pull.status import Stats
from s3pull.watermark import Watermark

__all__ = ["HEARTBEAT_INTERVAL_SECONDS", "PUBLISH_INTERVAL_SECONDS", "StatePublisher"]

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL_SECONDS: Final = 3600.0
# Tests shorten it; operators have no reason to (it bounds the cost, see README "Fleet").
PUBLISH_INTERVAL_SECONDS: Final = float(os.environ.get("S3PULL_PUBLISH_INTERVAL_SECONDS", "30"))
CHECK_SECONDS: Final = 1.0  # how often local state is compared with what was published
BURST: Final = 2.0  # publications allowed back to back before the interval applies


class StatePublisher:
    def __init__(
        self,
        sqs: Any,
        queue_url: Callable[[], str],
        instance_id: str,
        stats: Stats,
        watermark: Watermark,
        interval: float = PUBLISH_INTERVAL_SECONDS,
    ) -> None:
        self._sqs = sqs
        self._queue_url = queue_url
        self._instance_id = instance_id
        self._stats = stats
        self._watermark = watermark
        self._interval = interval
        self._published: tuple[object, ...] | None = None
        self._last_at = float("-inf")  # monotonic time of the last attempt
        self._tokens = BURST  # a token bucket: one publication each, refilled per interval
        self._refilled_at = time.monotonic()
        self.requests = 0  # sent, for the log line at the end
        # Looked up here, during start-up (s3pull/__init__): an agent that publishes
        # nothing never pays for it, and what the lookup leaves behind is freed with the
        # rest of start-up (heap.py) instead of at the first publication.
        self._version = s3pull.__version__

    def _news(self, phase: str | None = None) -> tuple[object, ...]:
        """What, when it differs from the last publication, is worth publishing."""
        errors = self._stats.recent_errors
        return (
            phase or self._stats.health(),
            errors[-1]["at"] if errors else None,
            self._watermark.handled,
        )

    async def run(self) -> None:
        """Publish as the rules above say, until cancelled."""
        while True:
            await asyncio.sleep(CHECK_SECONDS)
            now = time.monotonic()
            self._tokens = min(BURST, self._tokens + (now - self._refilled_at) / self._interval)
            self._refilled_at = now
            heartbeat_due = now - self._last_at >= HEARTBEAT_INTERVAL_SECONDS
            if heartbeat_due or (self._tokens >= 1 and self._news() != self._published):
                self._tokens = max(0.0, self._tokens - 1)
                await self.publish()

    async def publish(self, phase: str | None = None) -> bool:
        """Publish now (``phase`` overrides the current one: ``stopped``). True when SQS
        took it; a failure is logged and left for the next publication."""
        self._last_at = time.monotonic()
        news = self._news(phase)
        try:
            await self._prove_applied_through()
            state = AgentState(
                instance_id=self._instance_id,
                version=self._version,
                phase=str(news[0]),
                applied_through=self._through(),
                last_error=self._last_error(),
                heartbeat=datetime.now(UTC),
            )
            self.requests += 1
            await self._sqs.tag_queue(QueueUrl=self._queue_url(), Tags=state.tags())
        except TRANSIENT_ERRORS as exc:
            log.warning("could not publish this agent's state on its queue's tags: %s", exc)
            return False
        self._published = news
        log.debug("published state: %s, applied through %s", news[0], state.applied_through)
        return True

    async def _prove_applied_through(self) -> None:
        """Without an empty long poll since messages were last finished, ask the queue
        whether anything is visible (one request; idle agents never get here twice)."""
        mark = self._watermark
        if not mark.needs_proof():
            return
        asked_at = mark.now()
        self.requests += 1
        attributes = (
            await self._sqs.get_queue_attributes(
                QueueUrl=self._queue_url(),
                AttributeNames=[
                    "ApproximateNumberOfMessages",
                    "ApproximateNumberOfMessagesNotVisible",
                    "ApproximateNumberOfMessagesDelayed",
                ],
            )
        )["Attributes"]
        mark.hidden_are_ours(int(attributes.get("ApproximateNumberOfMessagesNotVisible", 0)))
        if not int(attributes.get("ApproximateNumberOfMessages", 0)) and not int(
            attributes.get("ApproximateNumberOfMessagesDelayed", 0)
        ):
            mark.queue_was_empty(asked_at)

    def _through(self) -> datetime | None:
        through = self._watermark.through()
        return datetime.fromtimestamp(through, UTC) if through is not None else None

    def _last_error(self) -> str | None:
        errors = self._stats.recent_errors
        if not errors:
            return None
        at = datetime.fromtimestamp(errors[-1]["at"], UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return f"{at} {errors[-1]['message']}"

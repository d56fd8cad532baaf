"""What publishing an agent's state for the fleet view costs: TagQueue and
GetQueueAttributes requests on the agent's own provisioned queue, counted at the server,
first idle, then while changes arrive at a steady rate. Per hour and in dollars per
server per month (SQS: $0.40 per million requests, 730 hours a month).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from s3pull.emulator import create_pipeline

from ..agent import AgentProcess, MirrorSpec, write_config
from ..context import OBJECT_SIZE, Context, delta

__all__ = ["run_publishing"]

BUCKET = "publishing"
INSTANCE = "i-0bench0publish00"
QUEUE = f"{BUCKET}-{INSTANCE}"
DOLLARS_PER_REQUEST = 0.40 / 1_000_000
HOURS_PER_MONTH = 730


def _phase(ctx: Context, url: str) -> str:
    tags = ctx.client("sqs").list_queue_tags(QueueUrl=url).get("Tags", {})
    return str(tags.get("s3pull:phase", ""))


def _steady_uploads(ctx: Context, rate: float, seconds: float) -> tuple[int, float]:
    """PUT small objects at ``rate`` a second for ``seconds``, or as fast as moto takes
    them from four threads when it cannot; (objects put, seconds it took)."""
    s3 = ctx.client("s3")
    lock = threading.Lock()
    sent = [0]
    started = time.monotonic()

    def upload() -> None:
        while time.monotonic() - started < seconds:
            with lock:
                index = sent[0]
                sent[0] += 1
            delay = started + index / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            s3.put_object(Bucket=BUCKET, Key=f"steady/{index:07d}", Body=b"x" * OBJECT_SIZE)

    threads = [threading.Thread(target=upload) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sent[0], time.monotonic() - started


def _row(window: str, seconds: float, changes: int, requests: dict[str, int]) -> dict[str, Any]:
    publishing = requests.get("sqs:TagQueue", 0) + requests.get("sqs:GetQueueAttributes", 0)
    per_hour = publishing * 3600 / seconds
    return {
        "window": window,
        "seconds": seconds,
        "changes_per_s": changes / seconds,
        "tag_requests": requests.get("sqs:TagQueue", 0),
        "attribute_requests": requests.get("sqs:GetQueueAttributes", 0),
        "requests_per_hour": per_hour,
        "dollars_per_month": per_hour * HOURS_PER_MONTH * DOLLARS_PER_REQUEST,
        "receives_per_hour": requests.get("sqs:ReceiveMessage", 0) * 3600 / seconds,
        "request_detail": requests,
    }


def run_publishing(ctx: Context) -> None:
    pipeline = create_pipeline(ctx.moto.endpoint, BUCKET)
    # Nobody reads the pipeline's own queue here, and moto's SendMessage slows down with
    # a queue's depth: only the agent's queue stays subscribed.
    sns = ctx.client("sns")
    for subscription in sns.list_subscriptions_by_topic(TopicArn=pipeline.topic_arn)[
        "Subscriptions"
    ]:
        sns.unsubscribe(SubscriptionArn=subscription["SubscriptionArn"])
    state = ctx.work / BUCKET / "state"
    config = write_config(
        state.with_suffix(".toml"),
        ctx.moto.endpoint,
        f"{BUCKET}-{{instance_id}}",
        state,
        [MirrorSpec(BUCKET, "", ctx.work / BUCKET / "mirror")],
        own_queue=(pipeline.topic_arn, INSTANCE),
    )
    agent = AgentProcess(config, ctx.log("publishing-run"))
    try:
        agent.wait_ready()
        url = ctx.client("sqs").get_queue_url(QueueName=QUEUE)["QueueUrl"]
        # The start-up publications (bootstrapping, then in sync) are not the idle cost.
        deadline = time.monotonic() + 120
        while _phase(ctx, url) != "in sync" and time.monotonic() < deadline:
            time.sleep(1.0)
        time.sleep(2.0)
        window = ctx.sizes.publish_seconds
        before = ctx.moto.agent_requests(QUEUE)
        time.sleep(window)
        idle = delta(ctx.moto.agent_requests(QUEUE), before)
        before = ctx.moto.agent_requests(QUEUE)
        changes, seconds = _steady_uploads(ctx, ctx.sizes.publish_rate, window)
        steady = delta(ctx.moto.agent_requests(QUEUE), before)
    finally:
        agent.stop()
    ctx.results.add("publishing", **_row("idle", window, 0, idle))
    ctx.results.add(
        "publishing", **_row(f"{ctx.sizes.publish_rate:.0f} changes/s", seconds, changes, steady)
    )

"""Trust nothing an event says (issue 12, items 2 and 5), end to end: a real agent against
moto, bodies through the real S3 -> SNS -> SQS path, and forged ones sent beside them.

- A field the agent passes on that S3 would never send (a NUL in ``eventTime``) makes the
  body unparseable: it never reaches a trigger command and ends in the dead-letter queue
  byte for byte.
- Only the configured topics, ``aws:s3`` and configured buckets are accepted; the rest is
  refused, logged and deleted.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conftest import Agent, queue_depth, render_config, wait_until
from faults_conftest import dead_letters
from s3pull.emulator import Pipeline, create_pipeline
from test_agent import s3_event
from test_trigger import runs, trigger_config


def test_a_nul_in_event_time_never_reaches_a_command_and_is_dead_lettered(
    s3: Any, sqs: Any, pipeline: Pipeline, tmp_path: Path, start_agent: Callable[..., Agent]
) -> None:
    config, output = trigger_config(tmp_path, pipeline)
    agent = start_agent(config)
    agent.wait_ready()
    s3.put_object(Bucket=pipeline.bucket, Key="incoming/b1/data.csv", Body=b"1,2")
    s3.put_object(Bucket=pipeline.bucket, Key="incoming/b1/_READY", Body=b"")
    wait_until(lambda: len(runs(output)) == 1, what="the real marker's run")

    forged = json.loads(s3_event(pipeline, "ObjectCreated:Put", "incoming/b2/_READY", size=0))
    forged["Records"][0]["eventTime"] = "2026-11-30T10:00:00.000Z\x00; rm -rf /"
    body = json.dumps(forged)
    message_id = sqs.send_message(QueueUrl=pipeline.queue_url, MessageBody=body)["MessageId"]
    dead: list[str] = []
    wait_until(
        lambda: dead.extend(dead_letters(pipeline.endpoint, pipeline.dead_letter_url)) or dead,
        timeout=60,
        what="the forged body in the dead-letter queue",
    )
    assert dead == [body]
    log = agent.log
    # max_receive_count is 2: logged on each receive, never run.
    assert log.count(f"message {message_id} (receive ") == 2, log
    assert "Records[0].eventTime" in log and "not an ISO 8601 UTC time" in log
    assert log.count(": running ") == 1 and "orders incoming/b2/" not in log
    assert len(runs(output)) == 1
    assert "Traceback" not in log and "unexpectedly" not in log
    assert agent.stop() == 0


def _envelope(topic_arn: str, body: str) -> str:
    return json.dumps(
        {
            "Type": "Notification",
            "MessageId": "a3f1c2d4-0000-4000-8000-000000000001",
            "TopicArn": topic_arn,
            "Message": body,
            "Timestamp": "2026-11-30T10:00:00.000Z",
            "SignatureVersion": "1",
        }
    )


def test_only_configured_topics_sources_and_buckets_are_applied(
    moto_endpoint: str,
    s3: Any,
    sqs: Any,
    tmp_path: Path,
    start_agent: Callable[..., Agent],
) -> None:
    # Without raw delivery, so every real message names its topic. A fixed queue URL and
    # no accept_topics: the topics are those the queue policy lets send.
    wrapped = create_pipeline(
        moto_endpoint, f"trust-{os.getpid()}-{id(tmp_path)}", raw_delivery=False
    )
    mirror = tmp_path / "mirror"
    config = tmp_path / "s3pull.toml"
    config.write_text(
        render_config(
            wrapped,
            tmp_path / "state",
            [{"name": "data", "bucket": wrapped.bucket, "prefix": "", "directory": mirror}],
        )
    )
    agent = start_agent(config)
    agent.wait_ready()
    agent.wait_for_log(f"accepting SNS messages from {wrapped.topic_arn}")
    # A real upload through the queue policy's topic lands.
    s3.put_object(Bucket=wrapped.bucket, Key="real.txt", Body=b"real")
    wait_until(lambda: (mirror / "real.txt").exists(), what="a change from the topic")

    def event(key: str, source: str = "aws:s3", bucket: str | None = None) -> str:
        body = json.loads(s3_event(wrapped, "ObjectCreated:Put", key, size=1))
        body["Records"][0]["eventSource"] = source
        if bucket is not None:
            body["Records"][0]["s3"]["bucket"]["name"] = bucket
        return json.dumps(body)

    other_topic = wrapped.topic_arn.rsplit(":", 1)[0] + ":someone-else"
    forged = {
        "topic": _envelope(other_topic, event("quiet/other-topic.txt")),
        "source": _envelope(wrapped.topic_arn, event("quiet/other-source.txt", "aws:lambda")),
        "raw source": event("quiet/raw-other-source.txt", "aws:sqs"),
        "bucket": _envelope(wrapped.topic_arn, event("quiet/x.txt", bucket="not-configured")),
    }
    for body in forged.values():
        sqs.send_message(QueueUrl=wrapped.queue_url, MessageBody=body)
    s3.put_object(Bucket=wrapped.bucket, Key="after.txt", Body=b"after")
    wait_until(lambda: (mirror / "after.txt").exists(), what="a good change after forged ones")
    wait_until(lambda: queue_depth(wrapped, wrapped.queue_url) == 0, what="queue drained")

    log = agent.log
    # Each refused once, with its reason, and deleted (not dead-lettered).
    assert log.count(f"{other_topic}, which this agent does not accept") == 1, log
    assert log.count("eventSource 'aws:lambda' is not aws:s3") == 1, log
    assert log.count("eventSource 'aws:sqs' is not aws:s3") == 1, log
    assert log.count("no mirror or trigger is configured for bucket 'not-configured'") == 1
    # Nothing forged was acted on: no outcome line (downloaded, absent...) for its keys.
    assert not re.search(r"data: \w+ quiet/", log), log
    assert not (mirror / "quiet").exists()
    assert dead_letters(wrapped.endpoint, wrapped.dead_letter_url) == []
    assert "Traceback" not in log and "unexpectedly" not in log
    assert agent.stop() == 0

"""Ordering under stress: notifications arrive at least once, duplicated and out of order;
whatever the order, the mirror ends equal to S3.

Each round runs a random sequence of creates, overwrites and deletes on a few keys of a
bucket without notifications (including a key and a "directory" of the same name, which
S3 never holds at once here), and forges one AWS-shaped event per operation with
``test_agent.s3_event``. Events are delivered while the operations still run, each one
only after its operation (as S3 does), one to three times, shuffled, so duplicates and
stale events land before and after newer ones. Rounds alternate between events with a
``sequencer`` (increasing in S3's real order, per key), without, and a mix of both. At
the end of every round the directory must equal S3 byte for byte, the queue must be empty
and the dead-letter queue too. The seed is printed; ``S3PULL_ORDERING_SEED`` replays it.
"""

from __future__ import annotations

import dataclasses
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

from conftest import Agent, wait_until
from faults_conftest import dead_letters, local_tree, quiet_bucket, s3_tree, write_config
from s3pull.emulator import Pipeline
from test_agent import queue_depth, s3_event

ROUNDS = 9
OPERATIONS = 30
MODES = ("sequencer", "none", "mixed")
CREATED = ("ObjectCreated:Put", "ObjectCreated:Put", "ObjectCreated:Copy", "ObjectCreated:Post")
REMOVED = ("ObjectRemoved:Delete", "ObjectRemoved:DeleteMarkerCreated")


def keys_of(round_number: int) -> tuple[list[str], tuple[str, str]]:
    """Plain keys, and a (file, file below a directory of the same name) pair."""
    base = f"data/r{round_number}"
    return [f"{base}/a", f"{base}/b", f"{base}/sub/c"], (f"{base}/d", f"{base}/d/x")


class Postman:
    """Holds events until a random moment, then delivers them shuffled."""

    def __init__(self, sqs: Any, queue_url: str, rng: random.Random) -> None:
        self._sqs = sqs
        self._queue_url = queue_url
        self._rng = rng
        self._pending: list[tuple[int, str]] = []  # (operation number, body)
        self.delivered = self.duplicates = self.late = 0

    def post(self, operation: int, body: str) -> None:
        copies = self._rng.choice((1, 1, 2, 3))
        self.duplicates += copies - 1
        self._pending.extend([(operation, body)] * copies)

    def deliver(self, count: int, now: int) -> None:
        """Send ``count`` pending events (all: ``len``) while operation ``now`` is the
        newest; count those a newer operation overtook."""
        self._rng.shuffle(self._pending)
        for _ in range(min(count, len(self._pending))):
            operation, body = self._pending.pop()
            self._sqs.send_message(QueueUrl=self._queue_url, MessageBody=body)
            self.delivered += 1
            self.late += operation < now

    def deliver_all(self, now: int) -> None:
        self.deliver(len(self._pending), now)


def test_duplicated_and_reordered_events_end_equal_to_s3(
    s3: Any,
    sqs: Any,
    pipeline: Pipeline,
    tmp_path: Path,
    start_agent: Callable[..., Agent],
) -> None:
    seed = int(os.environ.get("S3PULL_ORDERING_SEED", random.randrange(1 << 32)))
    print(f"\nS3PULL_ORDERING_SEED={seed}")
    rng = random.Random(seed)
    quiet = dataclasses.replace(pipeline, bucket=quiet_bucket(s3))
    mirror = tmp_path / "mirror"
    config = write_config(
        tmp_path / "s3pull.toml",
        pipeline,
        tmp_path / "state",
        [{"name": "data", "bucket": quiet.bucket, "prefix": "data/", "directory": mirror}],
    )
    agent = start_agent(config)
    agent.wait_ready()

    postman = Postman(sqs, quiet.queue_url, rng)
    sequencer = 0x0055AED6DCD9000000
    for round_number in range(ROUNDS):
        mode = MODES[round_number % len(MODES)]
        plain, (file_key, below_key) = keys_of(round_number)
        partner = {file_key: below_key, below_key: file_key}
        present: set[str] = set()
        for operation in range(OPERATIONS):
            key = rng.choice([*plain, file_key, below_key])
            # S3 would hold both d and d/x happily; a disk cannot. Keep them apart here
            # (the refusal when S3 holds both is tested in test_agent.py).
            if partner.get(key) in present:
                key, remove = partner[key], True  # make room first
            else:
                remove = key in present and rng.random() < 0.4
            if remove:
                s3.delete_object(Bucket=quiet.bucket, Key=key)
                present.discard(key)
                event_name, size = rng.choice(REMOVED), None
            else:
                body = f"{key} v{operation} ".encode() * rng.randint(1, 50)
                s3.put_object(Bucket=quiet.bucket, Key=key, Body=body)
                present.add(key)
                event_name, size = rng.choice(CREATED), len(body)
            sequencer += rng.randint(1, 1 << 20)  # increasing in S3's real order
            with_sequencer = mode == "sequencer" or (mode == "mixed" and rng.random() < 0.5)
            as_sent = quote_plus(key) if rng.random() < 0.5 else key  # moto: '/' as %2F
            postman.post(
                operation,
                s3_event(
                    quiet,
                    event_name,
                    as_sent,
                    sequencer=f"{sequencer:018X}" if with_sequencer else None,
                    size=size,
                ),
            )
            postman.deliver(rng.randint(0, 3), now=operation)
        postman.deliver_all(now=OPERATIONS)

        wait_until(
            lambda: queue_depth(quiet, quiet.queue_url) == 0, timeout=60, what="queue drained"
        )
        expected = s3_tree(s3, quiet.bucket, "data/")
        assert local_tree(mirror) == expected, f"round {round_number} ({mode}), seed {seed}"
    assert dead_letters(quiet.endpoint, quiet.dead_letter_url) == []
    log = agent.log
    assert "will retry" not in log and "unexpectedly" not in log
    assert agent.process.poll() is None
    print(
        f"[figures] ordering: seed={seed}, rounds={ROUNDS}, operations={ROUNDS * OPERATIONS},"
        f" events_delivered={postman.delivered}, duplicates={postman.duplicates},"
        f" overtaken_by_a_newer_operation={postman.late},"
        f" stale_skipped={log.count('stale data/')},"
        f" unchanged={log.count('unchanged data/')}, refused={log.count('refused key')}"
    )
    assert agent.stop() == 0


def test_a_late_create_for_a_key_now_in_a_live_directorys_way_is_not_refused(
    s3: Any,
    sqs: Any,
    pipeline: Pipeline,
    tmp_path: Path,
    start_agent: Callable[..., Agent],
) -> None:
    # S3 saw: put d, delete d, put d/x; it never held d and d/x at once. The create of d
    # is redelivered last. The object is gone: the outcome is "absent", like any create
    # for an object that no longer exists, not a refusal naming a collision S3 never had.
    quiet = dataclasses.replace(pipeline, bucket=quiet_bucket(s3))
    mirror = tmp_path / "mirror"
    config = write_config(
        tmp_path / "s3pull.toml",
        pipeline,
        tmp_path / "state",
        [{"name": "data", "bucket": quiet.bucket, "prefix": "data/", "directory": mirror}],
    )
    agent = start_agent(config)
    agent.wait_ready()

    def deliver(event_name: str, key: str) -> None:
        def handled() -> int:
            log = agent.log
            return log.count(f"{key} ({event_name}") + log.count(f"refused key {key!r}")

        before = handled()
        body = s3_event(quiet, event_name, key, size=1)
        sqs.send_message(QueueUrl=quiet.queue_url, MessageBody=body)
        wait_until(lambda: handled() > before, what=f"{event_name} {key} handled")

    s3.put_object(Bucket=quiet.bucket, Key="data/d", Body=b"file d")
    deliver("ObjectCreated:Put", "data/d")
    s3.delete_object(Bucket=quiet.bucket, Key="data/d")
    s3.put_object(Bucket=quiet.bucket, Key="data/d/x", Body=b"file d/x")
    deliver("ObjectCreated:Put", "data/d/x")
    assert local_tree(mirror) == s3_tree(s3, quiet.bucket, "data/")

    deliver("ObjectCreated:Put", "data/d")  # the late duplicate
    assert local_tree(mirror) == s3_tree(s3, quiet.bucket, "data/")
    assert "refused key 'data/d'" not in agent.log
    assert "absent data/d (ObjectCreated:Put" in agent.log
    # The mirror of the reverse: put d/x, delete d/x, put d; the late create of d/x.
    s3.put_object(Bucket=quiet.bucket, Key="data/e/x", Body=b"file e/x")
    deliver("ObjectCreated:Put", "data/e/x")
    s3.delete_object(Bucket=quiet.bucket, Key="data/e/x")
    s3.put_object(Bucket=quiet.bucket, Key="data/e", Body=b"file e")
    deliver("ObjectCreated:Put", "data/e")
    deliver("ObjectCreated:Put", "data/e/x")
    assert local_tree(mirror) == s3_tree(s3, quiet.bucket, "data/")
    assert "refused key 'data/e/x'" not in agent.log
    assert "absent data/e/x (ObjectCreated:Put" in agent.log
    assert agent.stop() == 0

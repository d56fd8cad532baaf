"""Crash safety: ``kill -9`` the daemon mid-transfer, again and again, then restart it.

The fault proxy throttles S3 GETs of the large objects (20-32 MB) so that transfers last
long enough to be killed half-way. Each round changes S3 (overwrites of large and small
objects, new and deleted small ones), starts the agent, waits until a temporary file
holds part of a download, and kills it with SIGKILL: every other round during the
start-up reconcile, every other round after READY while it applies SQS events.

After every kill and every restart:
- no file under a real name is partial or torn: each one holds exactly one version that
  was uploaded for its key;
- the next start removes the temporary files the kill left (named, and counted in its
  log), before it is ready.
At the end the mirror equals S3 byte for byte, nothing is left in the queue and nothing
was dead-lettered. The seed is printed; ``S3PULL_CRASH_SEED`` replays a run.
"""

from __future__ import annotations

import os
import random
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import Agent, wait_until
from faultproxy import FaultProxy, Rule
from faults_conftest import dead_letters, digest, local_tree, temp_files, through, write_config
from s3pull.emulator import Pipeline, create_pipeline
from test_agent import queue_depth

ROUNDS = 22
LARGE = {"data/large/a.bin": 20 << 20, "data/large/b.bin": 24 << 20, "data/c.bin": 32 << 20}
SMALL = [f"data/small/s{i}.txt" for i in range(10)] + [f"data/small/deep/d{i}" for i in range(6)]
RATE = 12 << 20  # bytes per second for each throttled GET: about 2 s per large object


@pytest.fixture
def proxy(moto_endpoint: str) -> Iterator[FaultProxy]:
    with FaultProxy(moto_endpoint) as running:
        yield running


class Bucket:
    """The test's side of S3: uploads, and every version ever uploaded per key."""

    def __init__(self, s3: Any, name: str, rng: random.Random) -> None:
        self.s3 = s3
        self.name = name
        self.rng = rng
        self.versions: defaultdict[str, set[str]] = defaultdict(set)
        self._base = rng.randbytes(max(LARGE.values()))
        self._serial = 0

    def put(self, key: str, body: bytes) -> None:
        self.s3.put_object(Bucket=self.name, Key=key, Body=body)
        self.versions[key].add(digest(body))

    def put_large(self, key: str) -> None:
        # A fresh version of (nearly) the same size: a distinct MD5 every time.
        self._serial += 1
        size = LARGE[key] - self.rng.randrange(0, 4096)
        self.put(key, f"version {self._serial:08d} ".encode() + self._base[20:size])

    def change(self, large: bool) -> None:
        if large:
            self.put_large(self.rng.choice(sorted(LARGE)))
        for _ in range(self.rng.randint(1, 4)):
            key = self.rng.choice(SMALL)
            if self.rng.random() < 0.25:
                self.s3.delete_object(Bucket=self.name, Key=key)
            else:
                self.put(key, self.rng.randbytes(self.rng.randint(1, 64 << 10)))


def assert_whole(mirror: Path, bucket: Bucket) -> None:
    """Every file under a real name holds one complete uploaded version of its key."""
    for relative, sha in local_tree(mirror).items():
        if Path(relative).name.startswith(".s3pull-tmp-"):
            continue
        assert sha in bucket.versions[f"data/{relative}"], f"{relative} is partial or torn"


def transfer_in_progress(mirror: Path) -> bool:
    for temp in temp_files(mirror):
        try:
            if temp.stat().st_size > 0:
                return True
        except FileNotFoundError:
            continue
    return False


def test_kill_9_mid_transfer_never_leaves_a_partial_file(
    s3: Any,
    moto_endpoint: str,
    proxy: FaultProxy,
    tmp_path: Path,
    start_agent: Callable[..., Agent],
) -> None:
    seed = int(os.environ.get("S3PULL_CRASH_SEED", random.randrange(1 << 32)))
    print(f"\nS3PULL_CRASH_SEED={seed}")
    rng = random.Random(seed)
    # Kills hand messages back many times over; the redrive limit must not be what ends
    # them. max_receive_count=50 leaves the dead-letter queue for real failures.
    pipeline: Pipeline = create_pipeline(
        moto_endpoint, f"crash-{uuid.uuid4().hex[:12]}", max_receive_count=50
    )
    bucket = Bucket(s3, pipeline.bucket, rng)
    for key in LARGE:
        bucket.put_large(key)
    for key in SMALL[::2]:
        bucket.put(key, rng.randbytes(rng.randint(1, 64 << 10)))

    mirror = tmp_path / "mirror"
    config = write_config(
        tmp_path / "s3pull.toml",
        through(pipeline, proxy.url),
        tmp_path / "state",
        [{"name": "data", "bucket": pipeline.bucket, "prefix": "data/", "directory": mirror}],
    )

    def throttle() -> None:
        proxy.add(Rule("pass", "s3", "GetObject", key_prefix="data/", rate=RATE))

    leftovers: list[Path] = []
    kills = {"start-up reconcile": 0, "applying events": 0}
    mid_transfer = 0
    removed_on_restart = 0
    leftover_bytes: list[int] = []
    for round_number in range(ROUNDS):
        after_ready = round_number % 2 == 1
        proxy.clear()
        if not after_ready:
            bucket.change(large=True)
            throttle()
        agent = start_agent(config)

        # The kill's leftovers go first thing on restart, before the agent is ready.
        if leftovers:
            agent.wait_for_log(f"removed {len(leftovers)} temporary file(s)")
            removed_on_restart += len(leftovers)
        assert not any(path.exists() for path in leftovers)
        assert_whole(mirror, bucket)
        if after_ready:
            agent.wait_ready()
            assert not any(path.exists() for path in leftovers)
            assert_whole(mirror, bucket)
            throttle()
            bucket.change(large=True)  # arrives as SQS events, applied while ready

        wait_until(lambda: transfer_in_progress(mirror), timeout=60, what="a transfer")
        time.sleep(rng.uniform(0, 0.6))  # a large transfer lasts about 2 s: still mid-way
        agent.kill()  # SIGKILL: no handler, no drain, no clean-up
        leftovers = temp_files(mirror)
        mid_transfer += bool(leftovers)
        leftover_bytes.extend(path.stat().st_size for path in leftovers)
        kills["applying events" if "ready: polling" in agent.log else "start-up reconcile"] += 1
        assert_whole(mirror, bucket)

    # One last start, unthrottled: it must converge on S3 exactly.
    proxy.clear()
    agent = start_agent(config)
    if leftovers:
        agent.wait_for_log(f"removed {len(leftovers)} temporary file(s)")
        removed_on_restart += len(leftovers)
    agent.wait_ready()
    wait_until(
        lambda: queue_depth(pipeline, pipeline.queue_url) == 0, timeout=60, what="queue drained"
    )
    listed = {
        item["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(
            Bucket=pipeline.bucket, Prefix="data/"
        )
        for item in page.get("Contents", ())
    }
    local = {str(path.relative_to(mirror)) for path in mirror.rglob("*") if path.is_file()}
    assert local == {key[len("data/") :] for key in listed}
    for key in sorted(listed):
        body = s3.get_object(Bucket=pipeline.bucket, Key=key)["Body"].read()
        assert (mirror / key[len("data/") :]).read_bytes() == body, key
    assert temp_files(mirror) == []
    assert dead_letters(pipeline.endpoint, pipeline.dead_letter_url) == []
    assert agent.stop() == 0

    assert mid_transfer >= 20, (mid_transfer, kills)
    print(
        f"[figures] crash: seed={seed}, kills={sum(kills.values())} ({kills}),"
        f" mid_transfer={mid_transfer}, temp_files_removed_on_restart={removed_on_restart},"
        f" partial_bytes_discarded={sum(leftover_bytes)},"
        f" objects={len(listed)}, bytes={sum(os.path.getsize(p) for p in mirror.rglob('*'))}"
    )

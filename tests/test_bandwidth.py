"""A mirror's `max_bandwidth` (issue 15, item 6): one token bucket shared by all of the
mirror's downloads. Its accounting on an injected clock, then a real agent whose
downloads, counted in bytes against the bucket's own clock, stay under the cap."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conftest import Agent, render_config, run_s3pull, wait_until
from s3pull.bandwidth import TokenBucket
from s3pull.emulator import Pipeline


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_a_full_bucket_lets_one_second_through_then_paces_at_the_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1000, clock=clock, sleep=clock.sleep)
    assert bucket.reserve(1000) == 0  # the burst: one second's worth
    assert bucket.reserve(500) == 0.5  # then each byte costs 1/rate
    assert bucket.reserve(250) == 0.75  # debt adds up: waits are not independent
    clock.now += 0.75
    assert bucket.reserve(1) == 0.001
    clock.now += 10  # a quiet spell refills it, but never past one second's worth
    assert bucket.reserve(1000) == 0
    assert bucket.reserve(100) == 0.1


def test_a_chunk_larger_than_the_bucket_is_let_through_after_its_time() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1024, clock=clock, sleep=clock.sleep)
    asyncio.run(bucket.take(1 << 20))  # a 1 MiB chunk under a 1 KiB/s cap
    assert clock.slept == [(1 << 20) / 1024 - 1]


def test_concurrent_takers_share_the_cap() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1000, clock=clock, sleep=clock.sleep)

    async def download(chunks: int) -> None:
        for _ in range(chunks):
            await bucket.take(100)

    async def main() -> None:
        await asyncio.gather(*(download(20) for _ in range(4)))

    asyncio.run(main())
    # 8000 bytes at 1000/s with 1000 to start: 7 s of the bucket's clock at the least.
    assert bucket.bytes == 8000
    assert clock.now - 100.0 >= 7.0
    report = bucket.report()
    assert report["bytes"] <= report["burst_bytes"] + 1000 * report["seconds"]


def test_an_agent_honours_the_cap_over_all_of_a_mirrors_downloads(
    tmp_path: Path, pipeline: Pipeline, s3: Any, start_agent: Callable[..., Agent]
) -> None:
    rate = 256 * 1024
    for i in range(4):  # downloaded at once by the start-up reconcile (concurrency 8)
        s3.put_object(Bucket=pipeline.bucket, Key=f"big/{i}.bin", Body=bytes([i]) * rate)
    mirror = {
        "name": "big",
        "bucket": pipeline.bucket,
        "prefix": "big/",
        "directory": tmp_path / "big",
        "max_bandwidth": "256KiB/s",
    }
    config = tmp_path / "s3pull.toml"
    config.write_text(render_config(pipeline, tmp_path / "state", [mirror]))
    agent = start_agent(config)
    agent.wait_ready()
    assert sorted(p.name for p in (tmp_path / "big").iterdir()) == [f"{i}.bin" for i in range(4)]

    def bandwidth() -> dict[str, Any] | None:
        status = json.loads(run_s3pull("status", "--json", "--config", str(config)).stdout)
        report = (status["daemon"] or {}).get("bandwidth", {}).get("big")
        return report if report and report["bytes"] == 4 * rate else None

    report = wait_until(bandwidth, what="the limiter's report in status")
    assert report["limit_bytes_per_second"] == rate
    # What a token bucket promises, on its own clock: never more than one second's
    # burst above the rate, over the whole span of the four concurrent downloads.
    assert report["bytes"] <= report["burst_bytes"] + rate * (report["seconds"] + 0.001)
    assert report["seconds"] >= 2.99  # 1 MiB at 256 KiB/s with a 256 KiB burst
    assert report["waited_seconds"] > 0
    assert agent.stop() == 0

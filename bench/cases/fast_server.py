"""The transfer-only cases again on a faster local S3 server (npm ``s3rver``), for where
moto is the ceiling: full sync by every contender, as a fraction of s3rver's own GET
ceiling. s3rver serves S3 only (no SNS, no SQS), so ``s3pull run`` cannot run on it, and
requests are counted on moto only.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import boto3

from ..context import OBJECT_SIZE, Context
from ..load import LoadResult, run_load
from ..tools import Target
from .large import KEY, measure_large
from .sync import AWS, FULL, RCLONE, S3PULL_SYNC, S5CMD, add_full_row, count_files, runners_for

__all__ = ["run_fast_server"]

CREDENTIALS = ("S3RVER", "S3RVER")  # s3rver's fixed, verified credentials
SWEEP = (1, 4, 16)
LARGE_BUCKET = "fast-large"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def s3rver(ctx: Context) -> Iterator[str]:
    assert ctx.tools.s3rver.path is not None
    data = ctx.work / "s3rver-data"
    data.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    # Its truncated ListObjectsV2 needs the legacy provider on Node 17 and newer.
    env = {**os.environ, "NODE_OPTIONS": "--openssl-legacy-provider"}
    node = shutil.which("node") or "node"
    with ctx.log("s3rver").open("ab") as log:
        server = subprocess.Popen(
            [
                node,
                ctx.tools.s3rver.path,
                "-d",
                str(data),
                "-a",
                "127.0.0.1",
                "-p",
                str(port),
                "--silent",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("s3rver did not start; see its log")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(data, ignore_errors=True)


def _load(mode: str, endpoint: str, bucket: str, *extra: str) -> LoadResult:
    return run_load(
        mode,
        f"--endpoint={endpoint}",
        f"--bucket={bucket}",
        f"--access-key={CREDENTIALS[0]}",
        f"--secret-key={CREDENTIALS[1]}",
        *extra,
    )


def run_fast_server(ctx: Context) -> None:
    if ctx.tools.s3rver.path is None:
        for name in (S3PULL_SYNC, AWS, S5CMD, RCLONE):
            ctx.results.add(FULL, tool=name, server="s3rver", result=ctx.tools.s3rver.skipped)
        ctx.results.add("large", tool="all", server="s3rver", result=ctx.tools.s3rver.skipped)
        return
    with s3rver(ctx) as endpoint:
        s3 = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id=CREDENTIALS[0],
            aws_secret_access_key=CREDENTIALS[1],
        )
        for count in ctx.sizes.s3rver_sizes:
            bucket = f"fast-{count}"
            s3.create_bucket(Bucket=bucket)
            _load(
                "put",
                endpoint,
                bucket,
                f"--count={count}",
                f"--size={OBJECT_SIZE}",
                "--connections=8",
            )
            ceiling = max(
                _load(
                    "get",
                    endpoint,
                    bucket,
                    f"--count={min(count, 1000)}",
                    f"--connections={connections}",
                    f"--seconds={ctx.sizes.ceiling_seconds}",
                ).rate
                for connections in SWEEP
            )
            ctx.results.ceilings[f"s3rver_get_{count}"] = ceiling
            ctx.results.add(
                "ceilings",
                what=f"s3rver: GET {OBJECT_SIZE} B, {count}-object bucket (best of {SWEEP} conn.)",
                rate=ceiling,
                unit="GET/s",
                errors=0,
            )
            target = Target(
                endpoint,
                bucket,
                access_key=CREDENTIALS[0],
                secret_key=CREDENTIALS[1],
                server="s3rver",
            )
            runners = runners_for(ctx, target)
            root = ctx.work / bucket
            for index, name in enumerate((S3PULL_SYNC, AWS, S5CMD, RCLONE)):
                runner = runners[name]
                if isinstance(runner, str):
                    ctx.results.add(FULL, tool=name, server="s3rver", objects=count, result=runner)
                    continue
                directory: Path = root / f"d{index}"
                outcome = runner(directory, root / f"s{index}", f"{bucket}-{name.split()[0]}")
                add_full_row(
                    ctx, name, count, ceiling, outcome, count_files(directory), server="s3rver"
                )
            ctx.results.add(
                FULL,
                tool="s3pull run",
                server="s3rver",
                objects=count,
                result="skipped: needs SQS, which s3rver does not serve",
            )
            shutil.rmtree(root, ignore_errors=True)
        # Ranged readers (awscli, s5cmd) are at their worst on moto, which reads the whole
        # object for every range: the large object again, on a server that seeks.
        size = ctx.sizes.large_bytes
        s3.create_bucket(Bucket=LARGE_BUCKET)
        _load(
            "put",
            endpoint,
            LARGE_BUCKET,
            f"--prefix={KEY[:-6]}",
            "--count=1",
            f"--size={size}",
            "--connections=1",
        )
        target = Target(
            endpoint,
            LARGE_BUCKET,
            access_key=CREDENTIALS[0],
            secret_key=CREDENTIALS[1],
            server="s3rver",
        )
        measure_large(ctx, target, size)

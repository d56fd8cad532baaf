"""Nothing local crashes the daemon (issue 12, items 8 and 9): names that are not UTF-8,
files swapped for symlinks during a reconcile, a mirror directory deleted while running,
and a reconcile plan that never blocks the event loop. In-process against the moto
server with the real S3 -> SNS -> SQS path; real files under ``tmp_path``."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import os
import shutil
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import receive_bodies, render_config
from s3pull.aws import Clients, open_clients
from s3pull.config import Config, parse_config
from s3pull.dispatch import Consumer, Dispatcher
from s3pull.emulator import Pipeline, client
from s3pull.events import ObjectChange
from s3pull.inbox import Inbox, Message
from s3pull.ledger import Ledger
from s3pull.metrics import Metrics, Recorder
from s3pull.mirror import Mirror
from s3pull.plan import RemoteObject, execute, list_remote, plan
from s3pull.reconcile import reconcile_all
from s3pull.sources import Trust
from s3pull.status import Stats
from s3pull.watchers import local_drift
from test_dispatch import eventually

NOT_UTF8 = b"caf\xe9.txt"  # Latin-1 bytes: a name no S3 key can have


@dataclass
class Room:
    config: Config
    clients: Clients
    ledger: Ledger
    stats: Stats
    dispatcher: Dispatcher
    consumer: Consumer
    mirror: Mirror

    @property
    def directory(self) -> Path:
        return self.mirror.config.directory

    async def receive_one(self) -> Message:
        for _ in range(20):
            messages = await self.consumer.inbox.receive(1)
            if messages:
                return messages[0]
        raise AssertionError("no message arrived")


@pytest.fixture
async def room(tmp_path: Path, pipeline: Pipeline) -> AsyncIterator[Room]:
    mirror = {
        "name": "data",
        "bucket": pipeline.bucket,
        "prefix": "data/",
        "directory": tmp_path / "mirror",
    }
    text = render_config(pipeline, tmp_path / "state", [mirror])
    config = parse_config(text, tmp_path / "s3pull.toml")
    (tmp_path / "state").mkdir()
    (tmp_path / "mirror").mkdir()
    receive_bodies(client(pipeline.endpoint, "sqs"), pipeline.queue_url)  # the s3:TestEvent
    ledger = Ledger.open(config.agent.state_directory)
    stats = Stats()
    recorder = Recorder(stats, Metrics())
    async with open_clients(config, "s3", "sqs") as clients:
        mirrors = [Mirror(config.mirrors[0], clients.s3, ledger, recorder)]
        dispatcher = Dispatcher(recorder, 4, Trust.from_config(config))
        consumer = Consumer(Inbox(clients.sqs, pipeline.queue_url, 1, 2), mirrors, [])
        yield Room(config, clients, ledger, stats, dispatcher, consumer, mirrors[0])
    ledger.close()


def plant(directory: Path, name: bytes, content: bytes = b"local") -> bytes:
    """Create a file whose name is raw bytes (not necessarily UTF-8); return its path."""
    path = os.path.join(os.fsencode(directory), name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as file:
        file.write(content)
    return path


def present(path: bytes) -> bool:
    return os.path.lexists(path)


# -- item 8: names that are not UTF-8, files swapped for symlinks -------------------------


async def test_a_local_name_that_is_not_utf8_is_deleted_logged_escaped_and_never_recorded(
    room: Room, s3: Any, pipeline: Pipeline, caplog: pytest.LogCaptureFixture
) -> None:
    s3.put_object(Bucket=pipeline.bucket, Key="data/kept.txt", Body=b"kept")
    single = plant(room.directory, NOT_UTF8)
    nested = plant(room.directory, b"dir\xff/inner.txt")

    with caplog.at_level(logging.INFO, logger="s3pull"):
        report = await reconcile_all([room.mirror], 4)

    # No S3 key can name them: a delete = true mirror holds only what S3 holds.
    assert not present(single) and not present(nested)
    assert not present(os.path.join(os.fsencode(room.directory), b"dir\xff"))
    assert (room.directory / "kept.txt").read_bytes() == b"kept"
    assert report.deleted == 2 and report.failed == 0
    assert set(room.ledger.entries("data")) == {"data/kept.txt"}
    lines = [record.getMessage() for record in caplog.records]
    # The name is shown with its undecodable bytes escaped; every line is valid UTF-8.
    assert any(line.startswith("data: deleted data/caf\\xe9.txt (reconcile") for line in lines)
    assert any(line.startswith("data: deleted data/dir\\xff/inner.txt (") for line in lines)
    for line in lines:
        line.encode("utf-8")


async def test_a_local_name_that_is_not_utf8_is_kept_when_the_mirror_keeps_deletions(
    room: Room,
) -> None:
    config = dataclasses.replace(room.config.mirrors[0], delete=False)
    keep = Mirror(config, room.clients.s3, room.ledger)
    planted = plant(room.directory, NOT_UTF8)

    await reconcile_all([keep], 4)

    assert present(planted)


async def test_extra_files_swapped_for_symlinks_after_the_plan_are_refused_not_followed(
    room: Room, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_bytes(b"precious")
    (outside / "inner.txt").write_bytes(b"also precious")
    (room.directory / "extra.txt").write_bytes(b"extra")
    (room.directory / "sub").mkdir()
    (room.directory / "sub" / "inner.txt").write_bytes(b"extra too")
    # The bucket is empty: an operator's --allow-mass-delete, or the guard keeps both.
    planned = await plan(room.mirror, allow_mass_delete=True)
    assert sorted(key for key, _parts in planned.deletions) == [
        "data/extra.txt",
        "data/sub/inner.txt",
    ]

    # Between the plan and its execution, both are swapped for symlinks leading outside.
    (room.directory / "extra.txt").unlink()
    (room.directory / "extra.txt").symlink_to(outside / "precious.txt")
    shutil.rmtree(room.directory / "sub")
    (room.directory / "sub").symlink_to(outside)
    executed = await execute(room.mirror, planned, 4)

    assert executed.refused == 2 and executed.failures == []
    assert (outside / "precious.txt").read_bytes() == b"precious"
    assert (outside / "inner.txt").read_bytes() == b"also precious"
    assert (room.directory / "extra.txt").is_symlink()
    assert (room.directory / "sub").is_symlink()
    assert room.stats.refused == 2


# -- item 9: the mirror directory deleted while running ---------------------------------


async def test_a_change_after_the_directory_was_deleted_recreates_it(
    room: Room, s3: Any, pipeline: Pipeline
) -> None:
    shutil.rmtree(room.directory)
    s3.put_object(Bucket=pipeline.bucket, Key="data/a/after.txt", Body=b"after")
    message = await room.receive_one()

    assert await room.dispatcher.handle(room.consumer, message) == "acknowledged"

    assert (room.directory / "a" / "after.txt").read_bytes() == b"after"


async def test_a_change_is_handed_back_while_the_directory_cannot_be_recreated(
    room: Room, s3: Any, pipeline: Pipeline
) -> None:
    shutil.rmtree(room.directory)
    room.directory.write_bytes(b"a file where the directory was")
    s3.put_object(Bucket=pipeline.bucket, Key="data/later.txt", Body=b"later")
    message = await room.receive_one()

    assert await room.dispatcher.handle(room.consumer, message) == "retry"

    room.directory.unlink()  # back within the retries: the change lands
    message = await room.receive_one()
    assert await room.dispatcher.handle(room.consumer, message) == "acknowledged"
    assert (room.directory / "later.txt").read_bytes() == b"later"


async def drift_watcher(room: Room) -> AsyncIterator[asyncio.Task[None]]:
    stop = asyncio.Event()
    task = asyncio.create_task(local_drift([room.mirror], room.dispatcher, stop))
    await asyncio.sleep(0.5)  # the inotify watches are in place
    yield task
    stop.set()
    await asyncio.wait_for(task, 10)


@pytest.fixture
async def watching(room: Room) -> AsyncIterator[asyncio.Task[None]]:
    async for task in drift_watcher(room):
        yield task


async def test_the_drift_watcher_reconciles_and_watches_again_when_the_directory_is_back(
    room: Room, s3: Any, pipeline: Pipeline, watching: asyncio.Task[None]
) -> None:
    for name in ("one.txt", "deep/two.txt"):
        s3.put_object(Bucket=pipeline.bucket, Key=f"data/{name}", Body=name.encode())
    await reconcile_all([room.mirror], 4)
    assert (room.directory / "deep" / "two.txt").exists()

    shutil.rmtree(room.directory)
    await asyncio.sleep(0.5)
    room.directory.mkdir()  # back (an operator, or the next change recreated it)

    # Everything was lost with it: reconciled...
    # Both come back; the reconcile fetches them in parallel, so wait for each.
    await eventually(
        lambda: (
            (room.directory / "deep" / "two.txt").exists() and (room.directory / "one.txt").exists()
        )
    )
    assert (room.directory / "one.txt").read_bytes() == b"one.txt"
    # ...and watched again: drift in the new directory is repaired.
    await asyncio.sleep(0.5)
    (room.directory / "one.txt").write_bytes(b"tampered")
    await eventually(lambda: (room.directory / "one.txt").read_bytes() == b"one.txt")
    assert not watching.done()


async def test_the_drift_watcher_survives_a_name_that_is_not_utf8(
    room: Room, s3: Any, pipeline: Pipeline, watching: asyncio.Task[None]
) -> None:
    s3.put_object(Bucket=pipeline.bucket, Key="data/one.txt", Body=b"one")
    await reconcile_all([room.mirror], 4)

    plant(room.directory, NOT_UTF8)
    await asyncio.sleep(1.5)
    (room.directory / "one.txt").write_bytes(b"tampered")

    await eventually(lambda: (room.directory / "one.txt").read_bytes() == b"one")
    assert not watching.done()


# -- the plan never blocks the event loop ------------------------------------------------


async def test_planning_a_large_listing_keeps_the_event_loop_ticking(room: Room) -> None:
    objects = 50_000
    for d in range(100):
        (room.directory / f"d{d}").mkdir()
    for i in range(2_000):  # local files S3 does not have: walked for deletions
        (room.directory / f"d{i % 100}" / f"extra{i}.bin").write_bytes(b"")
    remote = [RemoteObject(f"data/d{i % 100}/f{i}.bin", "0" * 32, 1, 0) for i in range(objects)]
    gaps: list[float] = []

    async def tick() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0)
    # What is measured is the plan's own steps: a collection of the test process's whole
    # heap (pytest, botocore) would add a pause of its own, so none runs meanwhile.
    gc.disable()
    try:
        planned = await plan(room.mirror, remote=remote)
    finally:
        gc.enable()
        ticker.cancel()

    assert len(planned.downloads) == objects and len(planned.deletions) == 2_000
    # At least one tick per few hundred objects, and no step anywhere near a watchdog:
    # a loop blocked for the whole plan would show one tick and one long gap.
    assert len(gaps) >= 100, f"{len(gaps)} ticks while planning {objects} objects"
    assert max(gaps) < 0.5, f"the loop stalled for {max(gaps):.3f} s"


# -- a reconcile beside live events (the drift watcher's) -------------------------------


async def test_a_reconcile_beside_events_never_deletes_what_an_event_brought_after_its_listing(
    room: Room, s3: Any, pipeline: Pipeline
) -> None:
    # The listing is read first and the disk walked after it: an object uploaded in
    # between, applied by its event, is on disk but not in the listing.
    s3.put_object(Bucket=pipeline.bucket, Key="data/old.txt", Body=b"old")
    listing = await list_remote(room.mirror)
    s3.put_object(Bucket=pipeline.bucket, Key="data/new.txt", Body=b"new")
    change = ObjectChange(
        "created", "ObjectCreated:Put", pipeline.bucket, "data/new.txt", "2026-11-30T10:00:00Z"
    )
    assert (await room.mirror.apply(change)).outcome == "downloaded"
    planned = await plan(room.mirror, remote=listing)
    assert [key for key, _parts in planned.deletions] == ["data/new.txt"]  # what went wrong

    def hold(key: str) -> AbstractAsyncContextManager[None]:
        return room.dispatcher.holding(room.mirror, key)

    executed = await execute(room.mirror, planned, 2, hold=hold)

    assert (room.directory / "new.txt").read_bytes() == b"new"
    assert (room.directory / "old.txt").read_bytes() == b"old"
    assert executed.deleted == 0 and not executed.failures

"""Hostile input: keys, trigger batches and message bodies built to escape, confuse or
crash the agent.

- Keys (forged events, as S3 would encode them, some with moto's ``%2F``): traversal,
  absolute paths, NUL, over-long names and paths, reserved temp names, symlinks planted
  in the mirror (to a directory outside, to a file outside, dangling, looping, nested),
  a FIFO, file/directory collisions, deletes aimed through symlinks, and keys that only
  look hostile once decoded twice. Each refusal is logged exactly once per delivery,
  nothing is written or deleted outside the mirror (a sibling directory is snapshotted),
  the planted links are untouched, and keys that are merely odd land inside the mirror.
- Trigger batches: shell metacharacters in batch prefixes and file names are never
  executed (argv without a shell); a batch holding a traversal key and a marker whose
  batch prefix climbs out are refused as a whole, once per delivery, without running.
- Bodies: 256 KiB of junk, 256 KiB of nesting, truncated JSON (raw and in an SNS
  envelope), wrong types everywhere: each is logged on each receive, never deleted, and
  reaches the dead-letter queue byte for byte; a body with a 200 KB key is a refusal.
The agent never crashes and keeps applying good changes throughout.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import string
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import pytest

from conftest import Agent, wait_until
from faults_conftest import dead_letters, quiet_bucket, snapshot, write_config
from s3pull.emulator import Pipeline
from s3pull.errors import UnsafeKey
from test_agent import queue_depth, s3_event

RECORD_BATCH = Path(__file__).parent / "commands" / "record_batch.py"
TOKEN = f"s3pull-escape-{uuid.uuid4().hex[:8]}"  # in every name an escape would create


def encoded(key: str, index: int) -> str:
    """The key as S3 puts it in an event: real S3 keeps '/', moto encodes it as %2F."""
    return quote_plus(key, safe="/" if index % 2 else "")


def plant(mirror: Path, outside: Path) -> None:
    (outside / "sub").mkdir(parents=True)
    (outside / "target.txt").write_text("outside target")
    (outside / "victim.txt").write_text("must survive")
    (outside / "sub" / "file").write_text("outside sub")
    (mirror / "deep").mkdir(parents=True)
    (mirror / "link").symlink_to(outside, target_is_directory=True)
    (mirror / "filelink").symlink_to(outside / "target.txt")
    (mirror / "deep" / "inner").symlink_to(outside, target_is_directory=True)
    (mirror / "loop").symlink_to("loop")
    (mirror / "dangling").symlink_to(outside / "nothing-here")
    os.mkfifo(mirror / "fifo")


def escapes_found(roots: list[Path], recursive: list[Path], skip: list[Path]) -> list[str]:
    """Names carrying TOKEN in the places a traversal or a shell could have reached."""
    found = [str(root / name) for root in roots for name in os.listdir(root) if TOKEN in name]
    for root in recursive:
        for directory, dirs, names in os.walk(root):
            dirs[:] = [d for d in dirs if Path(directory, d) not in skip]
            found += [str(Path(directory, n)) for n in [*dirs, *names] if TOKEN in n]
    return found


def test_hostile_keys_are_refused_once_per_delivery_and_nothing_escapes(
    s3: Any,
    sqs: Any,
    pipeline: Pipeline,
    tmp_path: Path,
    start_agent: Callable[..., Agent],
) -> None:
    quiet = dataclasses.replace(pipeline, bucket=quiet_bucket(s3))
    mirror, outside = tmp_path / "mirror", tmp_path / "outside"
    plant(mirror, outside)
    long_path = "data/" + "/".join(["p" * 250] * 17) + "/f"
    refused = [
        f"data/../{TOKEN}-1",
        f"data/../../{TOKEN}-2",
        f"data/a/../../{TOKEN}-3",
        f"data/sub/../../../{TOKEN}-4",
        f"data/./{TOKEN}-5",
        f"data//{TOKEN}-6",
        f"data//tmp/{TOKEN}-7",
        f"data/x//{TOKEN}-8",
        "data/..",
        "data/.",
        f"data/{TOKEN}\x00.txt",
        "data/\x00",
        "data/" + "n" * 256,
        "data/" + "é" * 128,  # 128 characters, 256 bytes
        long_path,
        f"data/.s3pull-tmp-{TOKEN}",
        "data/sub/.s3pull-tmp-0123456789abcdef",
        f"data/link/{TOKEN}-9",
        f"data/link/sub/{TOKEN}-10",
        "data/filelink",
        "data/link",
        f"data/deep/inner/{TOKEN}-11",
        f"data/loop/{TOKEN}-12",
        "data/dangling",
        "data/fifo",
    ]
    # Deletes aimed through symlinks: the files outside must survive.
    refused_removes = ["data/link/victim.txt", "data/deep/inner/sub/file", "data/filelink"]
    # Keys that decode to traversal: S3 encodes once, the agent decodes once.
    pre_encoded = {
        f"data/%2E%2E/{TOKEN}-13": f"data/../{TOKEN}-13",
        f"data/..%2F{TOKEN}-14": f"data/../{TOKEN}-14",
        f"data%2F%2E%2E%2F%2E%2E%2F{TOKEN}-15": f"data/../../{TOKEN}-15",
    }
    # Odd but safe once decoded exactly once: they land inside the mirror.
    odd = {
        f"data/%252E%252E/{TOKEN}-16": f"data/%2E%2E/{TOKEN}-16",
        "data/a+b%2Bc": "data/a b+c",
        "data/$(touch x);`id`|&>": "data/$(touch x);`id`|&>",
    }
    for key in odd.values():
        s3.put_object(Bucket=quiet.bucket, Key=key, Body=key.encode())
    # S3 holds both a file and a "directory" of the same name. At start-up the reconcile
    # fetches both of each pair at once: one must win, the other be refused, once.
    pairs = [(f"data/pair{i}", f"data/pair{i}/child") for i in range(6)]
    for pair in pairs:
        for key in pair:
            s3.put_object(Bucket=quiet.bucket, Key=key, Body=key.encode())

    before_outside = snapshot(outside)
    before_links = {n: os.readlink(mirror / n) for n in ("link", "filelink", "loop", "dangling")}
    agent = start_agent(
        write_config(
            tmp_path / "s3pull.toml",
            pipeline,
            tmp_path / "state",
            [{"name": "data", "bucket": quiet.bucket, "prefix": "data/", "directory": mirror}],
        )
    )
    agent.wait_ready()
    baseline = agent.log
    for pair in pairs:
        on_disk = [key for key in pair if (mirror / key[len("data/") :]).is_file()]
        assert len(on_disk) == 1, (pair, on_disk)
        loser = next(key for key in pair if key not in on_disk)
        assert baseline.count(f"refused key {loser!r}") == 1, baseline
    assert "could not download" not in baseline
    # The start-up summary counts them as what they were: refused, not downloaded.
    downloads = len(odd) + len(pairs)
    assert f"{downloads} downloaded, 0 deleted, 0 up to date, {len(pairs)} refused" in baseline
    # From here on, count what the events cause.

    def send(event_name: str, key_as_sent: str, times: int) -> None:
        for _ in range(times):
            body = s3_event(quiet, event_name, key_as_sent, size=4)
            sqs.send_message(QueueUrl=quiet.queue_url, MessageBody=body)

    expected: dict[str, int] = {}  # log text -> exact count
    for index, key in enumerate(refused):
        times = 1 + index % 2  # every other key twice: one line per delivery
        send("ObjectCreated:Put", encoded(key, index), times)
        shown = f"refused key {UnsafeKey(key, '').shown}"
        expected[shown] = expected.get(shown, 0) + times
    for index, key in enumerate(refused_removes):
        send("ObjectRemoved:Delete", encoded(key, index), 1)
        shown = f"refused key {UnsafeKey(key, '').shown}"
        expected[shown] = expected.get(shown, 0) + 1
    for sent, key in pre_encoded.items():
        send("ObjectCreated:Put", sent, 1)
        expected[f"refused key {UnsafeKey(key, '').shown}"] = 1
    for sent, key in odd.items():
        send("ObjectCreated:Put", sent, 1)
        expected[f"{key} (ObjectCreated:Put"] = 1
    # Collisions created while running, one after the other: the newcomer is refused.
    for first, second in [("data/coll", "data/coll/child"), ("data/dir2/child", "data/dir2")]:
        for key in (first, second):
            s3.put_object(Bucket=quiet.bucket, Key=key, Body=key.encode())
            send("ObjectCreated:Put", encoded(key, 0), 1)
            wait_until(lambda key=key: f"{key!r}" in agent.log or f" {key} (" in agent.log)
        expected[f"refused key {UnsafeKey(second, '').shown}"] = 1
    s3.put_object(Bucket=quiet.bucket, Key="data/good.txt", Body=b"good")
    send("ObjectCreated:Put", "data/good.txt", 1)

    wait_until(lambda: (mirror / "good.txt").exists(), what="a good key after hostile ones")
    wait_until(lambda: queue_depth(quiet, quiet.queue_url) == 0, what="every message handled")
    log = agent.log[len(baseline) :]
    assert {text: log.count(text) for text in expected} == expected
    assert "will retry" not in log and "unexpectedly" not in log and "Traceback" not in log
    assert dead_letters(quiet.endpoint, quiet.dead_letter_url) == []

    # Nothing outside changed; the planted links still point where they pointed.
    assert snapshot(outside) == before_outside
    assert {n: os.readlink(mirror / n) for n in before_links} == before_links
    assert (mirror / "fifo").is_fifo()
    # The odd keys landed inside the mirror under their literal names; both collision
    # winners are files, the losers stay in S3.
    for key in odd.values():
        assert (mirror / key[len("data/") :]).read_bytes() == key.encode()
    assert (mirror / "coll").read_bytes() == b"data/coll"
    assert (mirror / "dir2" / "child").read_bytes() == b"data/dir2/child"
    legit = [mirror / "%2E%2E"]
    found = escapes_found(
        [Path("/"), Path("/tmp"), tmp_path.parent, Path.cwd()], [tmp_path], skip=legit
    )
    assert found == []
    assert agent.process.poll() is None
    deliveries = sum(expected.values()) + 1
    keys_tried = (
        len(refused) + len(refused_removes) + len(pre_encoded) + len(odd) + 2 * len(pairs) + 5
    )
    print(
        f"\n[figures] hostile keys: keys={keys_tried}, deliveries={deliveries},"
        f" refusals={sum(v for k, v in expected.items() if k.startswith('refused'))},"
        f" longest_log_line={max(len(line) for line in log.splitlines())}"
    )
    assert agent.stop() == 0


def test_shell_metacharacters_and_traversal_in_trigger_batches(
    s3: Any,
    sqs: Any,
    pipeline: Pipeline,
    tmp_path: Path,
    start_agent: Callable[..., Agent],
) -> None:
    quiet = dataclasses.replace(pipeline, bucket=quiet_bucket(s3))
    output = tmp_path / "runs.jsonl"
    batches = tmp_path / "batches"
    agent = start_agent(
        write_config(
            tmp_path / "s3pull.toml",
            pipeline,
            tmp_path / "state",
            [],
            [
                {
                    "name": "orders",
                    "bucket": quiet.bucket,
                    "prefix": "incoming/",
                    "marker": "_READY",
                    "directory": batches,
                    "command": [sys.executable, str(RECORD_BATCH), str(output)],
                }
            ],
        )
    )
    agent.wait_ready()

    def marker(key: str, times: int = 1) -> None:
        s3.put_object(Bucket=quiet.bucket, Key=key, Body=b"")
        for index in range(times):
            body = s3_event(quiet, "ObjectCreated:Put", encoded(key, index))
            sqs.send_message(QueueUrl=quiet.queue_url, MessageBody=body)

    # Metacharacters in the batch prefix and in file names: data, never code.
    shell = f"incoming/$(touch {TOKEN}-pwned)/`touch {TOKEN}-pwned2`;a|b&&c>d $HOME/"
    files = {
        "f; rm -rf ~.csv": b"1",
        f"$(touch {TOKEN}-pwned3).csv": b"2",
        "sub dir/'quote\" *?[x].csv": b"3",
        "-rf": b"4",
    }
    for name, body in files.items():
        s3.put_object(Bucket=quiet.bucket, Key=shell + name, Body=body)
    marker(shell + "_READY")
    # A batch holding a key that climbs out, and a marker whose batch climbs out.
    s3.put_object(Bucket=quiet.bucket, Key="incoming/b2/ok.csv", Body=b"ok")
    s3.put_object(Bucket=quiet.bucket, Key=f"incoming/b2/../../{TOKEN}-esc", Body=b"x")
    marker("incoming/b2/_READY", times=2)
    marker(f"incoming/../{TOKEN}-trig/_READY", times=2)

    wait_until(lambda: queue_depth(quiet, quiet.queue_url) == 0, what="every marker handled")
    (run,) = [json.loads(line) for line in output.read_text().splitlines()]
    batch_dir = batches.joinpath(*shell[len("incoming/") :].rstrip("/").split("/"))
    assert run["cwd"] == str(batch_dir)
    assert run["env"]["S3PULL_BATCH_PREFIX"] == shell
    assert run["env"]["S3PULL_KEY"] == shell + "_READY"
    assert sorted(run["files"]) == sorted(files)
    assert run["contents"] == {name: body.decode() for name, body in files.items()}
    log = agent.log
    assert log.count("orders: batch incoming/b2/ refused: refused key") == 2
    # The marker itself is refused: its batch name has a ".." segment.
    assert log.count(f"refused key 'incoming/../{TOKEN}-trig/_READY'") == 2
    assert not (batches / "b2" / "ok.csv").exists(), "a refused batch writes nothing"
    pwned = [f"{TOKEN}-pwned", f"{TOKEN}-pwned2", f"{TOKEN}-pwned3"]
    for root in (Path.cwd(), tmp_path, batch_dir, Path("/tmp"), Path("/")):
        assert not any((root / name).exists() for name in pwned)
    found = escapes_found([Path("/"), Path("/tmp"), tmp_path.parent], [tmp_path], [batches])
    assert found == []
    assert dead_letters(quiet.endpoint, quiet.dead_letter_url) == []
    assert agent.process.poll() is None
    print(
        f"\n[figures] hostile batches: batches=3, files_with_metacharacters={len(files)},"
        f" refused_deliveries=4, commands_run=1"
    )
    assert agent.stop() == 0


def hostile_bodies(pipeline: Pipeline) -> list[str]:
    real = s3_event(pipeline, "ObjectCreated:Put", "data/x.txt", size=3)
    record = json.loads(real)["Records"][0]

    def with_record(**changes: Any) -> str:
        changed = json.loads(json.dumps(record))
        for path, value in changes.items():
            target = changed
            *parents, last = path.split("__")
            for name in parents:
                target = target[name]
            if value is ...:
                del target[last]
            else:
                target[last] = value
        return json.dumps({"Records": [changed]})

    envelope = {"Type": "Notification", "MessageId": "m", "TopicArn": "arn:aws:sns:x"}
    junk = random.Random(256).choices(string.printable, k=256 * 1024)
    return [
        "".join(junk),  # 256 KiB of junk
        "[" * (256 * 1024),  # 256 KiB of nesting
        real[: len(real) // 2],  # truncated
        real[:-1],
        json.dumps({**envelope, "Message": real[: len(real) // 2]}),
        json.dumps({**envelope, "Message": 42}),
        "null",
        "[]",
        "{}",
        '"Records"',
        "1e999",
        json.dumps({"Records": "x"}),
        json.dumps({"Records": [1]}),
        json.dumps({"Records": [None]}),
        with_record(eventName=5),
        with_record(eventVersion="3.0"),
        with_record(eventTime=...),
        with_record(s3=[]),
        with_record(s3__bucket=...),
        with_record(s3__bucket__name=None),
        with_record(s3__object__key=123),
        with_record(s3__object__key=""),
        with_record(s3__object__key="data%2F%FF%FE"),  # not UTF-8 once decoded
        with_record(s3__object__key="\ud800"),  # a lone surrogate
        with_record(s3__object__size="12"),
        with_record(s3__object__size=-1),
        with_record(s3__object__size=True),
        with_record(s3__object__sequencer="not-hex"),
        with_record(s3__object__eTag=["x"]),
    ]


@pytest.mark.moto_only(
    "sends bodies with characters SQS itself refuses: LocalStack, like AWS, answers"
    " InvalidMessageContents; moto takes them"
)
def test_hostile_bodies_reach_the_dead_letter_queue_untouched(
    s3: Any,
    sqs: Any,
    pipeline: Pipeline,
    tmp_path: Path,
    start_agent: Callable[..., Agent],
) -> None:
    mirror = tmp_path / "mirror"
    agent = start_agent(
        write_config(
            tmp_path / "s3pull.toml",
            pipeline,
            tmp_path / "state",
            [{"name": "data", "bucket": pipeline.bucket, "prefix": "data/", "directory": mirror}],
        )
    )
    agent.wait_ready()
    bodies = hostile_bodies(pipeline)
    sent = {
        sqs.send_message(QueueUrl=pipeline.queue_url, MessageBody=body)["MessageId"]: body
        for body in bodies
    }
    # A well-formed body with a 200 KB key is no parse error: a refusal, deleted at once.
    huge_key = "data/" + "k" * 200_000
    sqs.send_message(
        QueueUrl=pipeline.queue_url,
        MessageBody=s3_event(pipeline, "ObjectCreated:Put", huge_key, size=1),
    )
    s3.put_object(Bucket=pipeline.bucket, Key="data/after.txt", Body=b"fine")
    wait_until(lambda: (mirror / "after.txt").exists(), what="a good change among bad bodies")

    # max_receive_count is 2: each body is received, logged and left twice, then SQS
    # moves it to the dead-letter queue, untouched.
    dead: list[str] = []
    wait_until(
        lambda: (
            dead.extend(dead_letters(pipeline.endpoint, pipeline.dead_letter_url))
            or len(dead) >= len(bodies)
        ),
        timeout=90,
        what="every body in the dead-letter queue",
    )
    assert sorted(dead) == sorted(bodies)
    wait_until(lambda: queue_depth(pipeline, pipeline.queue_url) == 0, what="queue drained")
    log = agent.log
    for message_id in sent:
        assert log.count(f"message {message_id} (receive ") == 2, message_id
    assert log.count("refused key 'data/kkkk") == 1
    assert "unexpectedly" not in log and "Traceback" not in log
    assert agent.process.poll() is None
    print(
        f"\n[figures] hostile bodies: bodies={len(bodies)} (+1 with a 200 KB key),"
        f" largest={max(map(len, bodies))} bytes, dead_lettered={len(dead)},"
        f" parse_errors_logged={log.count('cannot be parsed')},"
        f" longest_log_line={max(len(line) for line in log.splitlines())}"
    )
    assert agent.stop() == 0

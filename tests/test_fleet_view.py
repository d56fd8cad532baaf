"""The fleet view: agents publish their state on their own queues' tags; `fleet status` and
`fleet wait` read them with the queues' counters and EC2, from anywhere.

The end-to-end test runs FLEET agents as real subprocesses against one moto server, each
with its own provisioned queue subscribed to one topic, as an Auto Scaling group would.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from conftest import Agent, render_config, wait_until
from conftest import run_s3pull as s3pull
from s3pull import __version__
from s3pull.emulator import Pipeline, client, create_pipeline
from s3pull.inbox import Message
from s3pull.statetags import MAX_VALUE, AgentState, decode_value, encode_value
from s3pull.watermark import LONGEST_RETRY_DELAY, Watermark

FLEET = 20  # the number; see README "Fleet" for what it costs on 2 cores
FAST_PUBLISHING = {"S3PULL_PUBLISH_INTERVAL_SECONDS": "2"}


# -- what goes into a tag ---------------------------------------------------------------


def test_tag_values_carry_any_error_safely_and_read_back() -> None:
    hostile = "s3://b/k\nERROR forged line\r\x1b[2J 'quoted' (ü) = 100% " + "x" * 600
    value = encode_value(hostile)
    assert len(value) <= MAX_VALUE
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 _.:/=+-@")
    assert set(value) <= allowed, set(value) - allowed
    shown = decode_value(value)
    assert shown.startswith("s3://b/k\\nERROR forged line\\r\\x1b[2J 'quoted' (ü) = 100% xxx")
    assert shown.endswith(" ...") and "\n" not in shown and "\r" not in shown
    assert decode_value(encode_value("a=b =3D")) == "a=b =3D"  # '=' itself round-trips

    state = AgentState(
        "i-1", "1.2.3", "in sync", datetime(2026, 12, 2, 7, 1, 2, 345000, UTC), None, None
    )
    back = AgentState.from_tags({"s3pull:instance-id": "i-1", **state.tags()})
    assert back.applied_through == state.applied_through
    assert (back.version, back.phase, back.last_error) == ("1.2.3", "in sync", None)
    assert all(len(v) <= MAX_VALUE and set(v) <= allowed for v in state.tags().values())


# -- how applied-through is proven --------------------------------------------------


def message(ident: str, sent: float, receives: int = 1) -> Message:
    return Message(ident, "r", "{}", receives, int(sent * 1000))


def test_applied_through_moves_only_on_proof() -> None:
    now = [1000.0]
    mark = Watermark(max_receive_count=3, visibility_timeout=60, clock=lambda: now[0])
    mark.queue_was_empty(1001.0)
    assert mark.through() is None  # a previous process may have left messages hidden
    mark.hidden_are_ours(0)
    mark.queue_was_empty(1002.0)
    assert mark.through() == 1002.0

    first, second = message("a", 1003.0), message("b", 1004.0)
    now[0] = 1005.0
    mark.received(first)
    mark.received(second)
    assert mark.needs_proof()
    mark.queue_was_empty(1006.0)
    assert mark.through() == 1003.0  # both pending: not past the older one
    mark.finished(first, acknowledged=True)
    assert mark.through() == 1004.0
    mark.finished(second, acknowledged=False)  # handed back: it comes again
    assert mark.through() == 1004.0
    mark.finished(message("b", 1004.0, receives=3), acknowledged=False)  # to the DLQ now
    assert mark.through() == 1006.0
    assert not mark.needs_proof()


def test_without_knowing_what_a_previous_process_hid_evidence_waits() -> None:
    now = [0.0]
    mark = Watermark(max_receive_count=3, visibility_timeout=60, clock=lambda: now[0])
    mark.received(message("mine", 0.5))
    mark.hidden_are_ours(2)  # one hidden message is not ours
    mark.queue_was_empty(10.0)
    assert mark.through() is None
    mark.queue_was_empty(LONGEST_RETRY_DELAY + 1.0)  # anything hidden before is back by now
    assert mark.through() == 0.5


# -- the fleet on moto ----------------------------------------------------------------


def fleet_config(
    tmp_path: Path, pipeline: Pipeline, name: str, instance_id: str, index: int
) -> Path:
    root = tmp_path / f"server{index:02d}"
    text = render_config(
        pipeline,
        root / "state",
        [{"name": "data", "bucket": pipeline.bucket, "directory": root / "mirror"}],
        queue={"url": None, "topic_arn": pipeline.topic_arn, "name": name},
    )
    text = text.replace('url = "None"\n', "")
    text = text.replace("[agent]\n", f'[agent]\ninstance_id = "{instance_id}"\n')
    path = root / "s3pull.toml"
    path.parent.mkdir(parents=True)
    path.write_text(text)
    return path


def fleet_json(config: Path) -> dict[str, Any]:
    result = s3pull("fleet", "status", "--json", "--config", str(config))
    assert result.returncode in (0, 1), result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


@pytest.mark.moto_only(
    "fleet status asks EC2 which instances exist; LocalStack runs S3, SNS, SQS only"
)
def test_a_fleet_waits_for_every_agent_and_names_the_one_stopped(
    tmp_path: Path,
    pipeline: Pipeline,
    s3: Any,
    moto_endpoint: str,
    start_agent: Callable[..., Agent],
) -> None:
    ec2 = client(moto_endpoint, "ec2")
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    instances = ec2.run_instances(ImageId=image, MinCount=FLEET, MaxCount=FLEET)["Instances"]
    ids = sorted(i["InstanceId"] for i in instances)
    template = f"s3pull-fv{uuid.uuid4().hex[:8]}-{{instance_id}}"  # this test's fleet only
    configs = [fleet_config(tmp_path, pipeline, template, i, n) for n, i in enumerate(ids)]
    # A server terminated without deprovisioning: its queue stays, its instance is gone.
    gone = "i-0deadbeefdeadbeef"
    gone_config = fleet_config(tmp_path, pipeline, template, gone, FLEET)
    assert s3pull("provision", "--config", str(gone_config)).returncode == 0

    agents = [start_agent(c, FAST_PUBLISHING) for c in configs]
    for agent in agents:  # 20 interpreters starting at once on 2 shared cores: be patient
        agent.wait_for_log("ready: polling", timeout=300)
    report = wait_until(
        lambda: (r := fleet_json(configs[0]))["in_sync"] == FLEET and r,
        timeout=300,
        what="every agent in sync in fleet status",
    )
    assert (
        report["summary"] == f"{FLEET} of {FLEET} in sync; 1 gone (s3pull gc removes their queues)"
    )
    rows = {row["instance_id"]: row for row in report["servers"]}
    assert rows[gone]["state"] == "gone" and rows[gone]["reasons"] == ["instance no longer exists"]

    # Each row says what the agent itself says.
    with ThreadPoolExecutor(4) as pool:
        own = list(pool.map(lambda c: s3pull("status", "--json", "--config", str(c)), configs))
    for instance_id, result in zip(ids, own, strict=True):
        mine = json.loads(result.stdout)
        row = rows[instance_id]
        assert (mine["verdict"], result.returncode) == ("IN SYNC", 0)
        assert row["state"] == "in sync" and row["version"] == __version__
        assert row["phase"] == mine["daemon"]["phase"] == "in sync"
        (queue,) = mine["queues"]
        assert queue["url"].endswith("/" + row["queue"])
        assert (row["waiting"], row["in_flight"], row["dead_letters"]) == (
            queue["visible"],
            queue["in_flight"],
            queue["dead_lettered"],
        )
        assert row["heartbeat_age_seconds"] < 600 and row["last_error"] is None

    # One upload; `fleet wait --key` returns once every server has it, and they all do.
    s3.put_object(Bucket=pipeline.bucket, Key="release/v2.txt", Body=b"v2")
    started = time.monotonic()
    key = f"s3://{pipeline.bucket}/release/v2.txt"
    waited = s3pull("fleet", "wait", "--key", key, "--timeout", "120", "--config", str(configs[0]))
    took = time.monotonic() - started
    assert waited.returncode == 0, waited.stdout + waited.stderr
    assert f"all {FLEET} live server(s) have it" in waited.stdout
    print(f"fleet wait for {FLEET} agents: {took:.1f} s")
    for config in configs:
        assert (config.parent / "mirror" / "release" / "v2.txt").read_bytes() == b"v2"
    # What they published says so too (no request needed for it: they were idle).
    last_modified = s3.head_object(Bucket=pipeline.bucket, Key="release/v2.txt")["LastModified"]

    def published_past_upload() -> dict[str, Any] | None:
        report = fleet_json(configs[0])
        for row in report["servers"]:
            through = row["published_applied_through"]
            if row["state"] != "gone" and (
                through is None
                or datetime.fromisoformat(through.replace("Z", "+00:00")) < last_modified
            ):
                return None
        return report

    published = wait_until(
        published_past_upload,
        timeout=60,
        what="every agent publishing an applied-through past the upload",
    )
    assert published["in_sync"] == FLEET

    # One agent stopped: the next change cannot reach it, and `fleet wait` says who and why.
    stopped = agents[3]
    assert stopped.stop(signal.SIGTERM) == 0
    s3.put_object(Bucket=pipeline.bucket, Key="release/v3.txt", Body=b"v3")
    late = s3pull("fleet", "wait", "--timeout", "10", "--config", str(configs[0]))
    assert late.returncode == 1, late.stdout
    assert f"{FLEET - 1} of {FLEET} live server(s) have it" in late.stdout
    (named,) = [line for line in late.stdout.splitlines() if line.startswith("  i-")]
    assert named.split()[0] == ids[3]
    assert "agent stopped" in named and "backlog: 1 waiting" in named
    assert gone not in late.stdout  # gone servers are not waited for

    status = s3pull("fleet", "status", "--config", str(configs[0]))
    assert status.returncode == 1
    assert f"{FLEET - 1} of {FLEET} in sync (1 stopped); 1 gone" in status.stdout
    (line,) = [ln for ln in status.stdout.splitlines() if ln.startswith(ids[3])]
    assert " stopped " in line and "agent stopped; backlog: 1 waiting" in line


def test_fleet_needs_per_server_queues(tmp_path: Path, pipeline: Pipeline) -> None:
    config = tmp_path / "fixed.toml"
    mirror = {"name": "data", "bucket": pipeline.bucket, "directory": tmp_path / "mirror"}
    config.write_text(render_config(pipeline, tmp_path / "state", [mirror]))
    for verb in (("status",), ("wait", "--timeout", "1")):
        result = s3pull("fleet", *verb, "--config", str(config))
        assert result.returncode == 78
        assert f"{config}: queue.topic_arn:" in result.stderr
        assert "fixed queue.url" in result.stderr
    usage = s3pull("fleet", "wait", "--since", "yesterday", "--config", str(config))
    assert usage.returncode == 2 and "--since 'yesterday': not an ISO 8601 time" in usage.stderr


@pytest.mark.moto_only("fleet status asks EC2 which instances exist")
def test_a_failing_agent_is_behind_with_its_error_escaped_until_it_applies(
    tmp_path: Path,
    moto_endpoint: str,
    s3: Any,
    start_agent: Callable[..., Agent],
    immutable: Callable[[Path], None],
) -> None:
    # Enough receives that the change keeps failing rather than being dead-lettered.
    pipeline = create_pipeline(moto_endpoint, f"t-{uuid.uuid4().hex[:16]}", max_receive_count=50)
    ec2 = client(moto_endpoint, "ec2")
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    instance = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1)["Instances"][0]
    instance_id = instance["InstanceId"]
    template = f"s3pull-fv{uuid.uuid4().hex[:8]}-{{instance_id}}"
    config = fleet_config(tmp_path, pipeline, template, instance_id, 0)
    mirror = config.parent / "mirror"
    mirror.mkdir()
    immutable(mirror)
    agent = start_agent(config, FAST_PUBLISHING)
    agent.wait_ready()
    wait_until(lambda: fleet_json(config)["in_sync"] == 1, timeout=60, what="in sync")

    key = "data/evil\rERROR forged 'line'.csv"
    s3.put_object(Bucket=pipeline.bucket, Key=key, Body=b"x")
    agent.wait_for_log("could not apply ObjectCreated:Put")

    def failing() -> dict[str, Any] | None:
        (row,) = fleet_json(config)["servers"]
        return row if row["phase"] == "failing: data" and row["last_error"] else None

    row = wait_until(failing, timeout=60, what="the agent publishing that it is failing")
    assert row["state"] == "behind"
    # The key's carriage return arrives escaped, its quotes whole, through SQS's tag alphabet.
    assert "data/evil\\rERROR forged 'line'.csv" in row["last_error"]
    assert "Operation not permitted" in row["last_error"] and "\r" not in row["last_error"]
    shown = s3pull("fleet", "status", "--config", str(config))
    assert shown.returncode == 1 and "0 of 1 in sync (1 behind)" in shown.stdout
    (line,) = [ln for ln in shown.stdout.splitlines() if ln.startswith(instance_id)]
    assert "phase: failing: data" in line and "evil\\rERROR forged 'line'.csv" in line

    late = s3pull("fleet", "wait", "--timeout", "3", "--config", str(config))
    assert late.returncode == 1
    assert f"  {instance_id}  " in late.stdout and "phase: failing: data" in late.stdout

    subprocess.run(["chattr", "-i", str(mirror)], check=True)
    healed = s3pull("fleet", "wait", "--timeout", "120", "--config", str(config))
    assert healed.returncode == 0, healed.stdout
    assert (mirror / "data" / "evil\rERROR forged 'line'.csv").read_bytes() == b"x"
    assert agent.stop() == 0

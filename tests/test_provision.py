"""Per-server queues: provision -> run -> deprovision -> gc, and `check` walking the chain,
against a moto server, with a local HTTP server playing the instance metadata service."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from conftest import Agent, render_config, wait_until
from conftest import run_s3pull as s3pull
from s3pull.emulator import Pipeline, client, create_pipeline
from s3pull.provision import HEARTBEAT_TAG, INSTANCE_TAG


class FakeMetadata:
    """IMDSv2 on loopback: a token PUT, then GETs that must carry the token."""

    TOKEN = "test-token"

    def __init__(self, instance_id: str) -> None:
        self.paths = {
            "instance-id": instance_id,
            "placement/region": "us-east-1",
            "autoscaling/target-lifecycle-state": "InService",
        }
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self) -> None:
                if self.path == "/latest/api/token" and self.headers.get(
                    "X-aws-ec2-metadata-token-ttl-seconds"
                ):
                    self._reply(200, fake.TOKEN)
                else:
                    self._reply(400, "")

            def do_GET(self) -> None:
                if self.headers.get("X-aws-ec2-metadata-token") != fake.TOKEN:
                    self._reply(401, "")
                    return
                value = fake.paths.get(self.path.removeprefix("/latest/meta-data/"))
                self._reply(200, value) if value is not None else self._reply(404, "")

            def _reply(self, status: int, body: str) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def env(self) -> dict[str, str]:
        return {
            "AWS_EC2_METADATA_DISABLED": "false",
            "AWS_EC2_METADATA_SERVICE_ENDPOINT": self.endpoint,
            "S3PULL_LIFECYCLE_POLL_SECONDS": "0.5",
        }


@pytest.fixture
def metadata() -> Iterator[FakeMetadata]:
    fake = FakeMetadata(f"i-{uuid.uuid4().hex[:17]}")
    yield fake
    fake.server.shutdown()


def topic_config(
    tmp_path: Path, pipeline: Pipeline, instance_id: str = "", name: str = "s3pull-{instance_id}"
) -> Path:
    path = tmp_path / "topic.toml"
    text = render_config(
        pipeline,
        tmp_path / "state",
        [
            {
                "name": "data",
                "bucket": pipeline.bucket,
                "prefix": "data/",
                "directory": tmp_path / "mirror",
            }
        ],
        queue={"url": None, "topic_arn": pipeline.topic_arn, "name": name, "max_receive_count": 3},
    )
    text = text.replace('url = "None"\n', "")
    if instance_id:
        text = text.replace("[agent]\n", f'[agent]\ninstance_id = "{instance_id}"\n')
    path.write_text(text)
    return path


def queue_url(sqs: Any, name: str) -> str | None:
    try:
        return str(sqs.get_queue_url(QueueName=name)["QueueUrl"])
    except sqs.exceptions.QueueDoesNotExist:
        return None


def subscriptions_for(sns: Any, topic_arn: str, queue_name: str) -> list[dict[str, Any]]:
    return [
        s
        for s in sns.list_subscriptions_by_topic(TopicArn=topic_arn)["Subscriptions"]
        if s["Endpoint"].endswith(f":{queue_name}")
    ]


def test_provision_is_idempotent_and_complete(
    tmp_path: Path, pipeline: Pipeline, sqs: Any, moto_endpoint: str
) -> None:
    config = topic_config(tmp_path, pipeline, instance_id="i-0123456789abcdef0")
    first = s3pull("provision", "--config", str(config))
    second = s3pull("provision", "--config", str(config))
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout
    url = first.stdout.strip()
    assert url.endswith("/s3pull-i-0123456789abcdef0")

    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    dead_url = queue_url(sqs, "s3pull-i-0123456789abcdef0-dlq")
    assert dead_url is not None
    dead = sqs.get_queue_attributes(QueueUrl=dead_url, AttributeNames=["All"])["Attributes"]
    redrive = json.loads(attributes["RedrivePolicy"])
    assert redrive == {"deadLetterTargetArn": dead["QueueArn"], "maxReceiveCount": 3}
    assert int(dead["MessageRetentionPeriod"]) > int(attributes["MessageRetentionPeriod"])
    assert attributes["SqsManagedSseEnabled"] == "true"
    (statement,) = json.loads(attributes["Policy"])["Statement"]
    assert statement["Principal"] == {"Service": "sns.amazonaws.com"}
    assert statement["Condition"] == {"ArnEquals": {"aws:SourceArn": pipeline.topic_arn}}
    tags = sqs.list_queue_tags(QueueUrl=url)["Tags"]
    assert tags[INSTANCE_TAG] == "i-0123456789abcdef0"
    assert datetime.strptime(tags[HEARTBEAT_TAG], "%Y-%m-%dT%H:%M:%SZ")

    sns = client(moto_endpoint, "sns")
    (subscription,) = subscriptions_for(sns, pipeline.topic_arn, "s3pull-i-0123456789abcdef0")
    sub_attributes = sns.get_subscription_attributes(
        SubscriptionArn=subscription["SubscriptionArn"]
    )["Attributes"]
    assert sub_attributes["RawMessageDelivery"] == "true"
    assert "FilterPolicy" not in sub_attributes  # routing stays in the agent

    result = s3pull("deprovision", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert queue_url(sqs, "s3pull-i-0123456789abcdef0") is None
    assert queue_url(sqs, "s3pull-i-0123456789abcdef0-dlq") is None
    assert subscriptions_for(sns, pipeline.topic_arn, "s3pull-i-0123456789abcdef0") == []


def test_run_provisions_from_metadata_then_syncs_and_survives_losing_its_queue(
    tmp_path: Path,
    pipeline: Pipeline,
    s3: Any,
    sqs: Any,
    metadata: FakeMetadata,
    start_agent: Callable[..., Agent],
) -> None:
    s3.put_object(Bucket=pipeline.bucket, Key="data/before.txt", Body=b"before")
    agent = start_agent(topic_config(tmp_path, pipeline), metadata.env)
    agent.wait_ready()
    name = f"s3pull-{metadata.paths['instance-id']}"
    assert queue_url(sqs, name) is not None
    mirror = tmp_path / "mirror"
    assert (mirror / "before.txt").read_bytes() == b"before"
    s3.put_object(Bucket=pipeline.bucket, Key="data/after.txt", Body=b"after")
    wait_until(lambda: (mirror / "after.txt").exists(), what="a change via the new queue")

    # The queue is deleted under the running agent; an upload meanwhile has no queue to
    # land in. The agent recreates the queue and reconciles, so nothing stays missing.
    url = queue_url(sqs, name)
    sqs.delete_queue(QueueUrl=url)
    s3.put_object(Bucket=pipeline.bucket, Key="data/while-gone.txt", Body=b"lost event")
    agent.wait_for_log(f"queue {name} no longer exists: recreating it", timeout=60)
    agent.wait_for_log(f"queue {name} recreated and mirrors reconciled", timeout=60)
    assert (mirror / "while-gone.txt").read_bytes() == b"lost event"
    s3.put_object(Bucket=pipeline.bucket, Key="data/later.txt", Body=b"later")
    wait_until(lambda: (mirror / "later.txt").exists(), what="a change via the recreated queue")
    assert agent.stop() == 0
    # A plain stop keeps the queue: changes made while the agent is down wait in it.
    assert queue_url(sqs, name) is not None


def test_terminated_lifecycle_state_drains_and_deprovisions(
    tmp_path: Path,
    pipeline: Pipeline,
    sqs: Any,
    moto_endpoint: str,
    metadata: FakeMetadata,
    start_agent: Callable[..., Agent],
) -> None:
    agent = start_agent(topic_config(tmp_path, pipeline), metadata.env)
    agent.wait_ready()
    name = f"s3pull-{metadata.paths['instance-id']}"
    assert queue_url(sqs, name) is not None

    metadata.paths["autoscaling/target-lifecycle-state"] = "Terminated"
    assert agent.process.wait(timeout=60) == 0
    assert "target lifecycle state is Terminated" in agent.log
    assert f"deprovisioned queue {name}" in agent.log
    assert queue_url(sqs, name) is None
    assert queue_url(sqs, name + "-dlq") is None
    sns = client(moto_endpoint, "sns")
    assert subscriptions_for(sns, pipeline.topic_arn, name) == []


@pytest.mark.moto_only("gc asks EC2 which instances exist; LocalStack runs S3, SNS, SQS only")
def test_gc_removes_queues_of_vanished_or_silent_servers_only(
    tmp_path: Path, pipeline: Pipeline, sqs: Any, moto_endpoint: str
) -> None:
    ec2 = client(moto_endpoint, "ec2")
    # One named image: moto answers an unfiltered Owners=["amazon"] with its 1,300 AMIs, a
    # listing that took 37-90 s of this test's time on a loaded 2-core machine.
    images = ec2.describe_images(
        Owners=["amazon"], Filters=[{"Name": "name", "Values": ["amzn2-ami-hvm-2.0.*-x86_64-gp2"]}]
    )["Images"]
    image = images[0]["ImageId"]
    live = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1)["Instances"][0]
    live_id, dead_id, silent_id = live["InstanceId"], "i-0deadbeefdeadbeef", None
    silent = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1)["Instances"][0]
    silent_id = silent["InstanceId"]
    template = f"s3pull-gc{uuid.uuid4().hex[:8]}-{{instance_id}}"  # isolates this test
    for instance_id in (live_id, dead_id, silent_id):
        config = topic_config(tmp_path, pipeline, instance_id, name=template)
        assert s3pull("provision", "--config", str(config)).returncode == 0
    silent_name = template.format(instance_id=silent_id)
    old = (datetime.now(UTC) - timedelta(days=10)).strftime("%Y-%m-%dT%H:%M:%SZ")
    sqs.tag_queue(QueueUrl=queue_url(sqs, silent_name), Tags={HEARTBEAT_TAG: old})
    # A subscription whose queue was deleted by hand, behind s3pull's back.
    sns = client(moto_endpoint, "sns")
    account_arn = pipeline.topic_arn.rsplit(":", 1)[0].replace(":sns:", ":sqs:")
    dangling_queue = template.format(instance_id="i-0fffffffffffffff0")
    sns.subscribe(
        TopicArn=pipeline.topic_arn, Protocol="sqs", Endpoint=f"{account_arn}:{dangling_queue}"
    )
    config = topic_config(tmp_path, pipeline, live_id, name=template)

    dry = s3pull("gc", "--dry-run", "--config", str(config))
    assert dry.returncode == 0, dry.stderr
    dead_name = template.format(instance_id=dead_id)
    assert f"would remove {dead_name} (instance {dead_id}: instance no longer exists)" in (
        dry.stdout
    )
    assert f"would remove {silent_name} (instance {silent_id}: heartbeat is stale" in dry.stdout
    assert "would unsubscribe" in dry.stdout and "its queue no longer exists" in dry.stdout
    assert queue_url(sqs, dead_name) is not None  # a dry run changes nothing

    result = s3pull("gc", "--config", str(config))
    assert result.returncode == 0, result.stderr
    for gone in (dead_name, silent_name):
        assert queue_url(sqs, gone) is None
        assert queue_url(sqs, gone + "-dlq") is None
        assert subscriptions_for(sns, pipeline.topic_arn, gone) == []
    assert subscriptions_for(sns, pipeline.topic_arn, dangling_queue) == []
    live_name = template.format(instance_id=live_id)
    assert queue_url(sqs, live_name) is not None
    assert len(subscriptions_for(sns, pipeline.topic_arn, live_name)) == 1
    assert "nothing to remove" in s3pull("gc", "--config", str(config)).stdout


def break_nothing(p: Pipeline, endpoint: str) -> None:
    pass


def break_notification(p: Pipeline, endpoint: str) -> None:
    client(endpoint, "s3").put_bucket_notification_configuration(
        Bucket=p.bucket, NotificationConfiguration={}
    )


def break_events(p: Pipeline, endpoint: str) -> None:
    client(endpoint, "s3").put_bucket_notification_configuration(
        Bucket=p.bucket,
        NotificationConfiguration={
            "TopicConfigurations": [{"TopicArn": p.topic_arn, "Events": ["s3:ObjectCreated:*"]}]
        },
    )


def break_topic(p: Pipeline, endpoint: str) -> None:
    client(endpoint, "sns").delete_topic(TopicArn=p.topic_arn)


def break_topic_policy(p: Pipeline, endpoint: str) -> None:
    owner_only = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"AWS": "arn:aws:iam::123456789012:root"},
                "Action": "sns:Publish",
                "Resource": p.topic_arn,
            }
        ],
    }
    client(endpoint, "sns").set_topic_attributes(
        TopicArn=p.topic_arn, AttributeName="Policy", AttributeValue=json.dumps(owner_only)
    )


def break_subscription(p: Pipeline, endpoint: str) -> None:
    sns = client(endpoint, "sns")
    for subscription in sns.list_subscriptions_by_topic(TopicArn=p.topic_arn)["Subscriptions"]:
        sns.unsubscribe(SubscriptionArn=subscription["SubscriptionArn"])


def break_queue_policy(p: Pipeline, endpoint: str) -> None:
    client(endpoint, "sqs").set_queue_attributes(QueueUrl=p.queue_url, Attributes={"Policy": ""})


def break_queue(p: Pipeline, endpoint: str) -> None:
    client(endpoint, "sqs").delete_queue(QueueUrl=p.queue_url)


@pytest.mark.parametrize(
    ("breakage", "expected"),
    [
        (break_nothing, "every link holds"),
        (break_notification, "sends no notifications to an SNS topic or to this queue"),
        (break_events, "does not include s3:ObjectRemoved:*"),
        (break_topic, "does not exist"),
        (break_topic_policy, "does not let S3 (bucket"),
        (break_subscription, "has no subscription for queue"),
        (break_queue_policy, "does not let topic"),
        (break_queue, "does not exist"),
    ],
)
def test_check_names_the_first_broken_link(
    tmp_path: Path,
    moto_endpoint: str,
    breakage: Callable[[Pipeline, str], None],
    expected: str,
) -> None:
    pipeline = create_pipeline(moto_endpoint, f"chain-{uuid.uuid4().hex[:12]}")
    config = tmp_path / "chain.toml"
    config.write_text(
        render_config(
            pipeline,
            tmp_path / "state",
            [{"name": "m", "bucket": pipeline.bucket, "prefix": "", "directory": tmp_path / "m"}],
        )
    )
    breakage(pipeline, moto_endpoint)
    result = s3pull("check", "--config", str(config))
    assert expected in result.stdout, result.stdout + result.stderr
    if breakage is break_nothing:
        assert result.returncode == 0
    else:
        assert result.returncode == 1
        assert "first broken link: " in result.stdout
        assert "BROKEN" in result.stdout


def test_check_says_when_max_receive_count_and_the_queue_disagree(
    tmp_path: Path, moto_endpoint: str
) -> None:
    # Issue 16: with a fixed url the queue's redrive said 2, the configuration 5, and
    # check said nothing. The agent does not change such a queue, so check must.
    pipeline = create_pipeline(
        moto_endpoint, f"redrive-{uuid.uuid4().hex[:12]}", max_receive_count=2
    )
    config = tmp_path / "redrive.toml"
    mirror = {"name": "m", "bucket": pipeline.bucket, "prefix": "", "directory": tmp_path / "m"}
    for configured, code in ((5, 1), (2, 0)):
        config.write_text(
            render_config(
                pipeline, tmp_path / "state", [mirror], queue={"max_receive_count": configured}
            )
        )
        result = s3pull("check", "--config", str(config))
        assert result.returncode == code, result.stdout + result.stderr
        if code:
            assert "after 2 receive(s), but [queue] max_receive_count is 5" in result.stdout
        else:
            assert "dead-letters after 2 receive(s), as configured" in result.stdout


def test_check_checks_this_server_too(tmp_path: Path, moto_endpoint: str) -> None:
    # Issue 16: check passed a mirror that could not be written and a trigger command that
    # does not exist; the agent then failed on every change.
    pipeline = create_pipeline(moto_endpoint, f"host-{uuid.uuid4().hex[:12]}")
    (tmp_path / "a-file").write_text("in the way of the mirror directory")
    mirror = {
        "name": "m",
        "bucket": pipeline.bucket,
        "prefix": "",
        "directory": tmp_path / "a-file" / "m",
    }
    trigger = {
        "name": "orders",
        "bucket": pipeline.bucket,
        "prefix": "in/",
        "marker": "_READY",
        "directory": tmp_path / "batches",
        "command": [str(tmp_path / "no-such-program")],
    }
    config = tmp_path / "host.toml"
    config.write_text(render_config(pipeline, tmp_path / "state", [mirror], [trigger]))

    result = s3pull("check", "--config", str(config))

    assert result.returncode == 1, result.stdout + result.stderr
    assert (
        f"PROBLEM mirror m: {tmp_path / 'a-file' / 'm'}: {tmp_path / 'a-file'} is not a directory"
        in result.stdout
    )
    assert (
        f"PROBLEM trigger orders: command {tmp_path / 'no-such-program'}: does not exist"
        in result.stdout
    )
    assert "every link holds" in result.stdout  # the AWS side is fine: both are said
    # Put right, check passes.
    mirror["directory"] = tmp_path / "m"
    trigger["command"] = ["/bin/true"]
    config.write_text(render_config(pipeline, tmp_path / "state", [mirror], [trigger]))
    result = s3pull("check", "--config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok      directories writable, trigger commands executable" in result.stdout


def test_check_probe_sees_a_synthetic_event_arrive(tmp_path: Path, moto_endpoint: str) -> None:
    pipeline = create_pipeline(moto_endpoint, f"probe-{uuid.uuid4().hex[:12]}")
    config = tmp_path / "probe.toml"
    config.write_text(
        render_config(
            pipeline,
            tmp_path / "state",
            [{"name": "m", "bucket": pipeline.bucket, "prefix": "", "directory": tmp_path / "m"}],
        )
    )
    result = s3pull("check", "--probe", "--config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "probe arrived in" in result.stdout

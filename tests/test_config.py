"""config.py: real files under tmp_path, parsed into records or refused with file, key, problem."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from s3pull.config import (
    DEFAULT_CONFIG_PATH,
    AgentConfig,
    AwsConfig,
    Config,
    MetricsConfig,
    MirrorConfig,
    QueueConfig,
    TriggerConfig,
    default_config_path,
    load_config,
)
from s3pull.errors import ConfigError

QUEUE_URL = "https://sqs.eu-west-1.amazonaws.com/123456789012/s3pull-web"
TOPIC_ARN = "arn:aws:sns:eu-west-1:123456789012:s3pull-events"

# Every key of SPEC.md's example, with topic_arn chosen over url (never both).
FULL = """\
[aws]
region = "eu-west-1"
endpoint_url = "http://127.0.0.1:5000"

[queue]
topic_arn = "arn:aws:sns:eu-west-1:123456789012:s3pull-events"
name = "s3pull-{instance_id}"
wait_time_seconds = 10
visibility_timeout = 120
max_receive_count = 7

[agent]
state_directory = "/var/lib/s3pull"
instance_id = "i-0abc"
concurrency = 8

[[mirror]]
name = "assets"
bucket = "acme-shared"
prefix = "assets/"
directory = "/srv/assets"
delete = false

[[mirror]]
name = "everything"
bucket = "acme.backup-1"
prefix = ""
directory = "/srv/backup"

[[trigger]]
name = "orders"
bucket = "acme-uploads"
prefix = "incoming/"
marker = "_READY"
directory = "/srv/incoming"
command = ["/opt/acme/bin/process-batch", "--fast"]
timeout_seconds = 600
manifest_timeout_seconds = 0
queue_url = "https://sqs.eu-west-1.amazonaws.com/123456789012/orders"

[metrics]
listen = "127.0.0.1:9464"
"""

NO_AWS_ENV: dict[str, str] = {}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "s3pull.toml"
    path.write_text(text, encoding="utf-8")
    return path


Doc = dict[str, Any]
Edit = Callable[[Doc], object]


def minimal() -> Doc:
    return {
        "queue": {"url": QUEUE_URL},
        "mirror": [{"name": "assets", "bucket": "acme-shared", "directory": "/srv/assets"}],
        "trigger": [
            {
                "name": "orders",
                "bucket": "acme-uploads",
                "marker": "_READY",
                "directory": "/srv/incoming",
                "command": ["/opt/acme/bin/process-batch"],
            }
        ],
    }


def to_toml(doc: Doc) -> str:
    """Just enough TOML writing for these tests (tomllib only reads)."""
    lines = [f"{key} = {_value(value)}" for key, value in doc.items() if not _is_table(value)]
    for key, value in doc.items():
        tables = [value] if isinstance(value, dict) else value if _is_table(value) else []
        header = f"[{key}]" if isinstance(value, dict) else f"[[{key}]]"
        for one in tables:
            lines += ["", header, *(f"{k} = {_value(v)}" for k, v in one.items())]
    return "\n".join(lines) + "\n"


def _is_table(value: object) -> bool:
    if isinstance(value, dict):
        return True
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_value(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)  # JSON strings and numbers are valid TOML


def test_full_config(tmp_path: Path) -> None:
    path = write(tmp_path, FULL)
    assert load_config(path, NO_AWS_ENV) == Config(
        path=path,
        aws=AwsConfig(region="eu-west-1", endpoint_url="http://127.0.0.1:5000"),
        queue=QueueConfig(
            url=None,
            topic_arn=TOPIC_ARN,
            name="s3pull-{instance_id}",
            wait_time_seconds=10,
            visibility_timeout=120,
            max_receive_count=7,
        ),
        agent=AgentConfig(
            state_directory=Path("/var/lib/s3pull"), instance_id="i-0abc", concurrency=8
        ),
        mirrors=(
            MirrorConfig(
                name="assets",
                bucket="acme-shared",
                prefix="assets/",
                directory=Path("/srv/assets"),
                delete=False,
            ),
            MirrorConfig(
                name="everything",
                bucket="acme.backup-1",
                prefix="",
                directory=Path("/srv/backup"),
                delete=True,
            ),
        ),
        triggers=(
            TriggerConfig(
                name="orders",
                bucket="acme-uploads",
                prefix="incoming/",
                marker="_READY",
                directory=Path("/srv/incoming"),
                command=("/opt/acme/bin/process-batch", "--fast"),
                timeout_seconds=600,
                manifest_timeout_seconds=0,
                queue_url="https://sqs.eu-west-1.amazonaws.com/123456789012/orders",
            ),
        ),
        metrics=MetricsConfig(listen="127.0.0.1:9464"),
    )


def test_defaults(tmp_path: Path) -> None:
    text = f"""\
[queue]
url = "{QUEUE_URL}"

[[mirror]]
name = "assets"
bucket = "acme-shared"
directory = "/srv/assets"

[[trigger]]
name = "orders"
bucket = "acme-uploads"
marker = "_READY"
directory = "/srv/incoming"
command = ["process"]
"""
    config = load_config(write(tmp_path, text), NO_AWS_ENV)
    assert config.aws == AwsConfig(region=None, endpoint_url=None)
    assert config.queue == QueueConfig(url=QUEUE_URL)
    assert config.queue.name == "s3pull-{instance_id}"
    assert (config.queue.wait_time_seconds, config.queue.visibility_timeout) == (20, 60)
    assert config.queue.max_receive_count == 5
    assert config.agent == AgentConfig(Path("/var/lib/s3pull"), "", 32)
    assert config.mirrors == (MirrorConfig("assets", "acme-shared", "", Path("/srv/assets")),)
    assert config.mirrors[0].delete is True
    [trigger] = config.triggers
    assert trigger.prefix == ""
    assert (trigger.timeout_seconds, trigger.manifest_timeout_seconds) == (3600, 300)
    assert trigger.queue_url == ""
    assert config.metrics is None


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"AWS_DEFAULT_REGION": "us-east-1"}, "us-east-1"),
        ({"AWS_REGION": "eu-north-1", "AWS_DEFAULT_REGION": "us-east-1"}, "eu-north-1"),
        ({"AWS_REGION": "", "AWS_DEFAULT_REGION": "us-east-1"}, "us-east-1"),
    ],
)
def test_region_from_environment(
    tmp_path: Path, environ: dict[str, str], expected: str | None
) -> None:
    config = load_config(write(tmp_path, to_toml(minimal())), environ)
    assert config.aws.region == expected


def test_region_in_file_wins_over_environment(tmp_path: Path) -> None:
    doc = minimal()
    doc["aws"] = {"region": "ap-southeast-2"}
    config = load_config(write(tmp_path, to_toml(doc)), {"AWS_REGION": "eu-north-1"})
    assert config.aws.region == "ap-southeast-2"


def test_paths_are_normalised_without_touching_the_filesystem(tmp_path: Path) -> None:
    doc = minimal()
    doc["agent"] = {"state_directory": "//var/lib/s3pull/"}
    doc["mirror"][0]["directory"] = "/srv//assets/./x/../y/"
    config = load_config(write(tmp_path, to_toml(doc)), NO_AWS_ENV)
    assert config.agent.state_directory == Path("/var/lib/s3pull")
    assert config.mirrors[0].directory == Path("/srv/assets/y")
    assert not Path("/srv/assets/y").exists()


def test_sibling_directories_with_a_common_name_prefix_do_not_overlap(tmp_path: Path) -> None:
    doc = minimal()
    doc["mirror"].append({"name": "b", "bucket": "acme-b", "directory": "/srv/assets2"})
    doc["agent"] = {"state_directory": "/srv/assets-state"}
    config = load_config(write(tmp_path, to_toml(doc)), NO_AWS_ENV)
    assert [m.directory for m in config.mirrors] == [Path("/srv/assets"), Path("/srv/assets2")]


def test_records_are_frozen(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, to_toml(minimal())), NO_AWS_ENV)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.queue.url = "https://elsewhere.example"  # type: ignore[misc]


def test_covers() -> None:
    mirror = MirrorConfig("a", "acme", "assets/", Path("/srv/a"))
    assert mirror.covers("acme", "assets/x.png")
    assert mirror.covers("acme", "assets/")
    assert not mirror.covers("acme", "assetsx/y")
    assert not mirror.covers("other", "assets/x.png")
    trigger = TriggerConfig("t", "acme", "", "_READY", Path("/srv/t"), ("true",))
    assert trigger.covers("acme", "any/key")
    assert not trigger.covers("acme-2", "any/key")


def test_default_config_path() -> None:
    assert default_config_path({}) == DEFAULT_CONFIG_PATH == Path("/etc/s3pull/s3pull.toml")
    assert default_config_path({"S3PULL_CONFIG": ""}) == DEFAULT_CONFIG_PATH
    assert default_config_path({"S3PULL_CONFIG": "/tmp/x.toml"}) == Path("/tmp/x.toml")


@pytest.mark.parametrize(
    ("listen", "host", "port"),
    [
        ("127.0.0.1:9464", "127.0.0.1", 9464),
        ("[::1]:1", "::1", 1),
        ("metrics.local:65535", "metrics.local", 65535),
    ],
)
def test_metrics_listen(tmp_path: Path, listen: str, host: str, port: int) -> None:
    doc = minimal()
    doc["metrics"] = {"listen": listen}
    metrics = load_config(write(tmp_path, to_toml(doc)), NO_AWS_ENV).metrics
    assert metrics is not None
    assert (metrics.listen, metrics.host, metrics.port) == (listen, host, port)


def test_queue_name_is_rendered_from_the_template() -> None:
    assert QueueConfig(name="web-{instance_id}-q").queue_name("i-0abc") == "web-i-0abc-q"


def test_unknown_key_suggests_the_close_one(tmp_path: Path) -> None:
    doc = minimal()
    doc["queue"]["wait_time_second"] = 5
    with pytest.raises(ConfigError, match="did you mean 'wait_time_seconds'"):
        load_config(write(tmp_path, to_toml(doc)), NO_AWS_ENV)


# Invalid configurations. Each case edits a small valid document, then expects
# ConfigError at one key, with a word of the problem.


def table(doc: Doc, where: str) -> dict[str, Any]:
    """`queue` or `mirror[1]` -> that table of `doc`, created when absent."""
    match = re.fullmatch(r"(\w+)\[(\d+)\]", where)
    if match:
        return doc[match[1]][int(match[2])]  # type: ignore[no-any-return]
    return doc.setdefault(where, {})  # type: ignore[no-any-return]


def put(where: str, **values: Any) -> Edit:
    return lambda doc: table(doc, where).update(values)


def drop(where: str, key: str) -> Edit:
    return lambda doc: table(doc, where).pop(key)


def add(kind: str, **values: Any) -> Edit:
    return lambda doc: doc[kind].append(values)


def replace(name: str, value: Any) -> Edit:
    return lambda doc: doc.update({name: value})


def mirror(name: str, directory: str) -> Edit:
    return add("mirror", name=name, bucket="acme-shared", directory=directory)


def trigger(name: str, directory: str) -> Edit:
    command = ["run"]
    return add(
        "trigger",
        name=name,
        bucket="acme-uploads",
        marker="_READY",
        directory=directory,
        command=command,
    )


def chain(*edits: Edit) -> Edit:
    return lambda doc: [edit(doc) for edit in edits]


def topic(*edits: Edit) -> Edit:
    """Switch the queue to a per-server one from the topic, then apply `edits`."""
    return chain(drop("queue", "url"), put("queue", topic_arn=TOPIC_ARN), *edits)


STATE = "agent.state_directory"

# (edit, key, a word of the problem)
INVALID: list[tuple[Edit, str, str]] = [
    # unknown keys, in every table
    (replace("s3", {"bucket": "x"}), "s3", "unknown"),
    (replace("region", "eu-west-1"), "region", "unknown"),
    (put("aws", profile="prod"), "aws.profile", "unknown"),
    (put("queue", wait_time=5), "queue.wait_time", "unknown"),
    (put("agent", threads=4), "agent.threads", "unknown"),
    (put("mirror[0]", delete_extra=True), "mirror[0].delete_extra", "unknown"),
    (put("trigger[0]", shell=True), "trigger[0].shell", "unknown"),
    (put("metrics", listen="127.0.0.1:9464", path="/m"), "metrics.path", "unknown"),
    # wrong types; bool is an int in Python but not in this file
    (put("queue", wait_time_seconds=True), "queue.wait_time_seconds", "integer"),
    (put("queue", visibility_timeout="60"), "queue.visibility_timeout", "integer"),
    (put("agent", concurrency=1.5), "agent.concurrency", "integer"),
    (put("mirror[0]", delete=1), "mirror[0].delete", "true or false"),
    (put("mirror[0]", delete="yes"), "mirror[0].delete", "true or false"),
    (put("mirror[0]", archived="thaw"), "mirror[0].archived", '"skip" or "restore"'),
    (put("mirror[0]", archived=True), "mirror[0].archived", "string"),
    (put("aws", region=1), "aws.region", "string"),
    (put("mirror[0]", directory=5), "mirror[0].directory", "path"),
    (put("trigger[0]", command="/bin/true"), "trigger[0].command", "array"),
    (put("trigger[0]", command=["/bin/sleep", 1]), "trigger[0].command[1]", "string"),
    (replace("queue", "x"), "queue", "table"),
    (replace("mirror", {"name": "a"}), "mirror", "[[mirror]]"),
    (replace("trigger", [1]), "trigger[0]", "table"),
    # required keys and tables
    (replace("queue", None), "queue", "missing"),
    (drop("mirror[0]", "name"), "mirror[0].name", "missing"),
    (drop("mirror[0]", "bucket"), "mirror[0].bucket", "missing"),
    (drop("mirror[0]", "directory"), "mirror[0].directory", "missing"),
    (drop("trigger[0]", "marker"), "trigger[0].marker", "missing"),
    (drop("trigger[0]", "command"), "trigger[0].command", "missing"),
    (replace("metrics", {}), "metrics.listen", "missing"),
    (chain(replace("mirror", None), replace("trigger", None)), "mirror", "at least one"),
    # out of range
    (put("queue", wait_time_seconds=0), "queue.wait_time_seconds", "between 1 and 20, got 0"),
    (put("queue", wait_time_seconds=25), "queue.wait_time_seconds", "between 1 and 20, got 25"),
    (put("queue", visibility_timeout=43201), "queue.visibility_timeout", "between"),
    (put("queue", max_receive_count=0), "queue.max_receive_count", "between"),
    (put("agent", concurrency=0), "agent.concurrency", "between 1 and 1024"),
    (put("agent", concurrency=5000), "agent.concurrency", "between 1 and 1024"),
    (put("trigger[0]", timeout_seconds=0), "trigger[0].timeout_seconds", "between"),
    (put("trigger[0]", manifest_timeout_seconds=-1), "trigger[0].manifest_timeout_seconds", "got"),
    # relative paths
    (put("agent", state_directory="var/lib/s3pull"), STATE, "absolute"),
    (put("mirror[0]", directory="srv/assets"), "mirror[0].directory", "absolute"),
    (put("trigger[0]", directory="./incoming"), "trigger[0].directory", "absolute"),
    (put("mirror[0]", directory=""), "mirror[0].directory", "absolute"),
    (put("mirror[0]", directory="~/assets"), "mirror[0].directory", "absolute"),
    (put("mirror[0]", directory="/srv/a\0b"), "mirror[0].directory", "NUL"),
    # overlapping directories
    (mirror("b", "/srv/assets"), "mirror[1].directory", "same"),
    (mirror("b", "/srv/x/../assets/"), "mirror[1].directory", "mirror 'assets'"),
    (mirror("b", "/srv/assets/sub"), "mirror[1].directory", "inside"),
    (mirror("b", "/srv"), "mirror[1].directory", "contains"),
    (put("trigger[0]", directory="/srv/assets/in"), "trigger[0].directory", "mirror 'assets'"),
    (put("trigger[0]", directory="/srv/assets"), "trigger[0].directory", "same"),
    (trigger("t2", "/srv/incoming/x"), "trigger[1].directory", "trigger 'orders'"),
    (put("agent", state_directory="/srv/assets/.s3pull"), STATE, "inside"),
    (put("agent", state_directory="/srv/assets"), STATE, "same"),
    (put("agent", state_directory="/srv"), STATE, "contains"),
    (put("agent", state_directory="/srv/incoming/s"), STATE, "trigger 'orders'"),
    # queue
    (put("queue", topic_arn=TOPIC_ARN), "queue.topic_arn", "together"),
    (drop("queue", "url"), "queue", "either url or topic_arn"),
    (put("queue", url="sqs.eu-west-1.amazonaws.com/1/q"), "queue.url", "URL"),
    (put("queue", url="ftp://example.com/q"), "queue.url", "https://"),
    (topic(put("queue", topic_arn="s3pull-events")), "queue.topic_arn", "ARN"),
    (
        topic(put("queue", topic_arn="arn:aws:sqs:eu-west-1:123456789012:q")),
        "queue.topic_arn",
        "ARN",
    ),
    (put("queue", name="s3pull-{hostname}"), "queue.name", "placeholder"),
    (put("queue", name="s3pull-{instance_id:>5}"), "queue.name", "placeholder"),
    (put("queue", name="s3pull-{instance_id"), "queue.name", "unmatched"),
    (put("queue", name="s3pull.{instance_id}"), "queue.name", "letters"),
    (put("queue", name=""), "queue.name", "empty"),
    (topic(put("queue", name="q" * 70 + "-{instance_id}")), "queue.name", "80"),
    (topic(put("agent", instance_id="web-1.example.com")), "agent.instance_id", "queue.name"),
    (put("aws", endpoint_url="localhost:5000"), "aws.endpoint_url", "URL"),
    (put("aws", region="EU West"), "aws.region", "region"),
    (put("trigger[0]", queue_url="orders"), "trigger[0].queue_url", "URL"),
    # names, buckets, prefixes, markers, commands
    (mirror("assets", "/srv/other"), "mirror[1].name", "unique"),
    (trigger("orders", "/srv/other"), "trigger[1].name", "unique"),
    (put("mirror[0]", name="my assets"), "mirror[0].name", "letters"),
    (put("trigger[0]", name=""), "trigger[0].name", "name"),
    (put("mirror[0]", bucket="Acme"), "mirror[0].bucket", "bucket name"),
    (put("mirror[0]", bucket="ab"), "mirror[0].bucket", "bucket name"),
    (put("mirror[0]", bucket="-acme"), "mirror[0].bucket", "bucket name"),
    (put("mirror[0]", bucket="a" * 64), "mirror[0].bucket", "bucket name"),
    (put("trigger[0]", bucket="acme..up"), "trigger[0].bucket", "bucket name"),
    (put("trigger[0]", bucket="192.168.1.1"), "trigger[0].bucket", "bucket name"),
    (put("mirror[0]", prefix="/assets/"), "mirror[0].prefix", "'/'"),
    (put("trigger[0]", prefix="in\0"), "trigger[0].prefix", "NUL"),
    (put("mirror[0]", prefix="assets//img/"), "mirror[0].prefix", "empty"),
    (put("mirror[0]", prefix="assets//"), "mirror[0].prefix", "empty"),
    (put("mirror[0]", prefix="/"), "mirror[0].prefix", "'/'"),
    (put("trigger[0]", prefix="in/./b/"), "trigger[0].prefix", "'.'"),
    (put("trigger[0]", prefix="in/.."), "trigger[0].prefix", "'..'"),
    (put("mirror[0]", prefix="./"), "mirror[0].prefix", "'.'"),
    (put("trigger[0]", marker=""), "trigger[0].marker", "base name"),
    (put("trigger[0]", marker="."), "trigger[0].marker", "base name"),
    (put("trigger[0]", marker=".."), "trigger[0].marker", "base name"),
    (put("trigger[0]", marker="done/_READY"), "trigger[0].marker", "base name"),
    (put("trigger[0]", marker="_READY\0"), "trigger[0].marker", "NUL"),
    (put("trigger[0]", command=[]), "trigger[0].command", "non-empty"),
    (put("trigger[0]", command=["", "x"]), "trigger[0].command[0]", "program"),
    (put("trigger[0]", command=["run", "a\0b"]), "trigger[0].command[1]", "NUL"),
    # metrics
    (put("metrics", listen="9464"), "metrics.listen", "HOST:PORT"),
    (put("metrics", listen="127.0.0.1:0"), "metrics.listen", "port"),
    (put("metrics", listen="127.0.0.1:99999"), "metrics.listen", "port"),
    (put("metrics", listen="::1:9464"), "metrics.listen", "[::1]:9464"),
    (put("metrics", listen="[::g]:9464"), "metrics.listen", "HOST:PORT"),
    (put("metrics", listen="[::1]"), "metrics.listen", "HOST:PORT"),
]


@pytest.mark.parametrize(("edit", "key", "word"), INVALID, ids=[f"{c[1]}:{c[2]}" for c in INVALID])
def test_invalid(tmp_path: Path, edit: Edit, key: str, word: str) -> None:
    doc = minimal()
    edit(doc)
    path = write(tmp_path, to_toml({k: v for k, v in doc.items() if v is not None}))
    with pytest.raises(ConfigError) as caught:
        load_config(path, NO_AWS_ENV)
    error = caught.value
    assert (error.path, error.key) == (str(path), key)
    assert word in error.problem
    assert str(path) in str(error) and key in str(error) and word in str(error)


def test_invalid_toml_names_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, '[queue]\nurl = "https://x.example/q"\nwait_time_seconds 20\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path, NO_AWS_ENV)
    assert (caught.value.path, caught.value.key) == (str(path), "")
    assert "not valid TOML" in caught.value.problem
    assert "line 3" in str(caught.value)


def test_duplicate_key_is_invalid_toml(tmp_path: Path) -> None:
    path = write(tmp_path, f'[queue]\nurl = "{QUEUE_URL}"\nurl = "{QUEUE_URL}"\n')
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path, NO_AWS_ENV)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as caught:
        load_config(path, NO_AWS_ENV)
    assert (caught.value.path, caught.value.key) == (str(path), "")
    assert str(caught.value) == f"{path}: no such file"


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path, NO_AWS_ENV)  # a directory
    assert caught.value.path == str(tmp_path)
    assert "cannot be read" in caught.value.problem


def test_file_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "s3pull.toml"
    path.write_bytes(b'[queue]\nurl = "caf\xe9"\n')
    with pytest.raises(ConfigError, match="UTF-8"):
        load_config(path, NO_AWS_ENV)


def test_trigger_max_parallel_and_environment(tmp_path: Path) -> None:
    doc = minimal()
    doc["trigger"][0].update(max_parallel=4, environment={"ACME_ENV": "prod", "_X1": ""})
    [trigger] = load_config(write(tmp_path, to_toml(doc)), NO_AWS_ENV).triggers
    assert trigger.max_parallel == 4
    assert trigger.environment == (("ACME_ENV", "prod"), ("_X1", ""))
    [default] = load_config(write(tmp_path, to_toml(minimal())), NO_AWS_ENV).triggers
    assert (default.max_parallel, default.environment) == (1, ())


TRIGGER_RUN_INVALID: list[tuple[Edit, str, str]] = [
    (put("trigger[0]", max_parallel=0), "trigger[0].max_parallel", "between 1 and 1000"),
    (put("trigger[0]", max_parallel=1001), "trigger[0].max_parallel", "between 1 and 1000"),
    (put("trigger[0]", max_parallel=True), "trigger[0].max_parallel", "integer"),
    (put("trigger[0]", environment=["A=b"]), "trigger[0].environment", "table"),
    (put("trigger[0]", environment={"1A": "x"}), "trigger[0].environment", "variable name"),
    (put("trigger[0]", environment={"A-B": "x"}), "trigger[0].environment", "variable name"),
    (put("trigger[0]", environment={"S3PULL_KEY": "x"}), "trigger[0].environment", "S3PULL_"),
    (put("trigger[0]", environment={"s3pull_key": "x"}), "trigger[0].environment", "S3PULL_"),
    (put("trigger[0]", environment={"A": 1}), "trigger[0].environment.A", "string"),
    (put("trigger[0]", environment={"A": "x\ny"}), "trigger[0].environment.A", "control"),
    (put("trigger[0]", environment={"A": "x\0"}), "trigger[0].environment.A", "control"),
]


@pytest.mark.parametrize(
    ("edit", "key", "word"),
    TRIGGER_RUN_INVALID,
    ids=[f"{c[1]}:{c[2]}" for c in TRIGGER_RUN_INVALID],
)
def test_invalid_trigger_run_settings(tmp_path: Path, edit: Edit, key: str, word: str) -> None:
    test_invalid(tmp_path, edit, key, word)


def test_a_prefix_is_a_folder(tmp_path: Path) -> None:
    # Issue 16: "assets" as a string prefix also matched "assets-archive/..." and mapped
    # "assets/a.txt" to the absolute path "/a.txt". It means the folder "assets/".
    doc = minimal()
    doc["mirror"][0]["prefix"] = "assets"
    doc["trigger"][0]["prefix"] = "incoming/batches"
    config = load_config(write(tmp_path, to_toml(doc)), NO_AWS_ENV)
    assert config.mirrors[0].prefix == "assets/"
    assert config.triggers[0].prefix == "incoming/batches/"
    assert config.mirrors[0].covers("acme-shared", "assets/a.txt")
    assert not config.mirrors[0].covers("acme-shared", "assets-archive/old.txt")
    assert not config.triggers[0].covers("acme-uploads", "incoming/batches-old/b1/_READY")


@pytest.mark.parametrize("prefix", ["", "assets/", "a b/c+d/", "..x/y../", "é/"])
def test_prefixes_already_folders_are_kept(tmp_path: Path, prefix: str) -> None:
    doc = minimal()
    doc["mirror"][0]["prefix"] = prefix
    assert load_config(write(tmp_path, to_toml(doc)), NO_AWS_ENV).mirrors[0].prefix == prefix


# Control characters (issue 12, item 7): any of them in any string of the file is an
# error, wherever it is, so nothing from the configuration can break a log line or a
# systemd unit file. TOML escapes put them in without a raw byte in the file.
CONTROL_CASES: list[tuple[Edit, str]] = [
    (put("mirror[0]", directory="/srv/a\nExecStartPre=+/bin/sh"), "mirror[0].directory"),
    (put("trigger[0]", directory="/srv/in\rcoming"), "trigger[0].directory"),
    (put("agent", state_directory="/var/lib/s3pull\x7f"), STATE),
    (put("mirror[0]", name="assets\x1b[31m"), "mirror[0].name"),
    (put("mirror[0]", prefix="assets/\n"), "mirror[0].prefix"),
    (put("mirror[0]", bucket="acme\tshared"), "mirror[0].bucket"),
    (put("trigger[0]", prefix="in\x00/"), "trigger[0].prefix"),
    (put("trigger[0]", marker="_READY\x85"), "trigger[0].marker"),
    (put("trigger[0]", command=["/bin/run", "--x", "a\nb"]), "trigger[0].command[2]"),
    (put("trigger[0]", command=["/bin/ru\tn"]), "trigger[0].command[0]"),
    (put("agent", instance_id="i-0abc\n"), "agent.instance_id"),
    (put("queue", url=QUEUE_URL + "\n"), "queue.url"),
    (put("queue", name="s3pull-\u0000{instance_id}"), "queue.name"),
    (put("aws", region="eu-west-1\n"), "aws.region"),
    (put("aws", endpoint_url="http://127.0.0.1:5000/\x0b"), "aws.endpoint_url"),
    (put("metrics", listen="127.0.0.1:9464\n"), "metrics.listen"),
    # Keys the agent does not know (yet) are refused for their control character first,
    # wherever they are nested.
    (put("trigger[0]", environment={"ACME": "a\nb"}), "trigger[0].environment.ACME"),
]


@pytest.mark.parametrize(("edit", "key"), CONTROL_CASES, ids=[f"{c[1]}" for c in CONTROL_CASES])
def test_control_characters_are_configuration_errors(tmp_path: Path, edit: Edit, key: str) -> None:
    doc = minimal()
    edit(doc)
    path = write(tmp_path, to_toml(doc))
    with pytest.raises(ConfigError) as caught:
        load_config(path, NO_AWS_ENV)
    error = caught.value
    assert (error.path, error.key) == (str(path), key)
    assert "control character" in error.problem
    # One line, whatever the value held: the message itself escapes it.
    assert str(error).isprintable()


def test_control_character_message_names_it(tmp_path: Path) -> None:
    doc = minimal()
    doc["mirror"][0]["directory"] = "/srv/a\nb"
    path = write(tmp_path, to_toml(doc))
    with pytest.raises(ConfigError) as caught:
        load_config(path, NO_AWS_ENV)
    assert str(caught.value) == (
        f"{path}: mirror[0].directory: must not contain control characters, "
        "found a newline (U+000A) at character 7 of '/srv/a\\nb'"
    )


def test_raw_control_characters_in_the_file_are_refused_too(tmp_path: Path) -> None:
    # TOML refuses most raw control characters itself, but lets a tab and the C1 range
    # (U+0080-U+009F, U+0085 is a line break to some readers) into a string as they are.
    doc = minimal()
    doc["mirror"][0]["directory"] = "/srv/as\tsets"
    for key, text in [
        ("mirror[0].directory", to_toml(doc).replace("\\t", "\t")),
        ("trigger[0].command[0]", to_toml(minimal()).replace("process-batch", "\x85")),
    ]:
        path = write(tmp_path, text)
        assert "\\" not in path.read_text()
        with pytest.raises(ConfigError) as caught:
            load_config(path, NO_AWS_ENV)
        assert caught.value.key == key
        assert "control character" in caught.value.problem


def test_control_characters_in_key_names_are_escaped_in_the_message(tmp_path: Path) -> None:
    path = write(tmp_path, to_toml(minimal()) + '"na\\nme" = 1\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path, NO_AWS_ENV)
    assert caught.value.key == "trigger[0].'na\\nme'"
    assert "control character" in caught.value.problem
    assert str(caught.value).isprintable()


# Mirror filters, the mass-deletion guard and the periodic reconcile (issue 15, 1, 3, 5).

MIRROR_CONTROLS_INVALID: list[tuple[Edit, str, str]] = [
    (put("mirror[0]", include=[]), "mirror[0].include", "at least one pattern"),
    (put("mirror[0]", include="**"), "mirror[0].include", "array of glob patterns"),
    (put("mirror[0]", include=["ok/**", 3]), "mirror[0].include[1]", "string"),
    (put("mirror[0]", include=["a\\"]), "mirror[0].include[0]", "not a valid glob"),
    (put("mirror[0]", exclude=["!"]), "mirror[0].exclude[0]", "not a valid glob"),
    (put("mirror[0]", exclude=[""]), "mirror[0].exclude[0]", "empty"),
    (put("mirror[0]", exclude=["#drafts"]), "mirror[0].exclude[0]", "comment"),
    (put("mirror[0]", exclude=["*.tmp "]), "mirror[0].exclude[0]", "spaces"),
    (put("mirror[0]", max_delete=-1), "mirror[0].max_delete", "count of files"),
    (put("mirror[0]", max_delete=True), "mirror[0].max_delete", "count of files"),
    (put("mirror[0]", max_delete="10"), "mirror[0].max_delete", "percentage"),
    (put("mirror[0]", max_delete="150%"), "mirror[0].max_delete", "between 0% and 100%"),
    (put("mirror[0]", max_delete=0.5), "mirror[0].max_delete", "count of files"),
    (put("mirror[0]", reconcile_interval=3600), "mirror[0].reconcile_interval", "duration"),
    (put("mirror[0]", reconcile_interval="6 h"), "mirror[0].reconcile_interval", "duration"),
    (put("mirror[0]", reconcile_interval="1w"), "mirror[0].reconcile_interval", "duration"),
    (put("mirror[0]", reconcile_interval="-1h"), "mirror[0].reconcile_interval", "duration"),
]


@pytest.mark.parametrize(
    ("edit", "key", "word"),
    MIRROR_CONTROLS_INVALID,
    ids=[f"{c[1]}:{c[2]}" for c in MIRROR_CONTROLS_INVALID],
)
def test_invalid_mirror_controls(tmp_path: Path, edit: Edit, key: str, word: str) -> None:
    test_invalid(tmp_path, edit, key, word)


def test_mirror_controls_and_their_defaults(tmp_path: Path) -> None:
    from s3pull.guard import DeleteLimit

    doc = minimal()
    [default] = load_config(write(tmp_path, to_toml(doc)), NO_AWS_ENV).mirrors
    assert (default.include, default.exclude) == (("**",), ())
    assert default.max_delete is None
    assert default.reconcile_interval == 6 * 3600
    doc["mirror"][0].update(
        prefix="assets/",
        exclude=["**/*.tmp", "drafts/**"],
        max_delete="12.5%",
        reconcile_interval="30m",
    )
    [mirror] = load_config(write(tmp_path, to_toml(doc)), NO_AWS_ENV).mirrors
    assert mirror.max_delete == DeleteLimit(percent=12.5)
    assert mirror.reconcile_interval == 1800
    for interval, seconds in (("0", 0), ("0h", 0), ("90s", 90), ("6h", 21600), ("2d", 172800)):
        doc["mirror"][0].update(reconcile_interval=interval, max_delete=100)
        [mirror] = load_config(write(tmp_path, to_toml(doc)), NO_AWS_ENV).mirrors
        assert (mirror.reconcile_interval, mirror.max_delete) == (seconds, DeleteLimit(count=100))


@pytest.mark.parametrize(
    ("include", "exclude", "kept", "left_out"),
    [
        # SPEC's example: ** spans folders, * stays in one, drafts/ only at the top.
        (
            ["**"],
            ["**/*.tmp", "drafts/**"],
            ["a.txt", "css/a.css", "x/drafts/a.txt", "a.tmp.txt", "drafts"],
            ["a.tmp", "x/y/a.tmp", "drafts/a.txt", "drafts/x/y.txt"],
        ),
        # No '/': any depth; a pattern that matches a folder covers what is below it.
        (["*.css"], [], ["a.css", "x/y/a.css", "x.css/b"], ["a.txt", "css"]),
        (["css/*.css"], [], ["css/a.css"], ["css/x/a.css", "a.css", "x/css/a.css"]),
        (["img/"], ["*.psd"], ["img/a.png", "img/x/b.png"], ["a.png", "img/a.psd"]),
        (["**", "!private/**"], [], ["a", "x/private/b"], ["private/a"]),
        (["Report?.CSV"], [], ["Report1.CSV"], ["report1.csv", "Report10.CSV"]),  # case counts
    ],
)
def test_filters_select_keys_below_the_prefix(
    tmp_path: Path, include: list[str], exclude: list[str], kept: list[str], left_out: list[str]
) -> None:
    doc = minimal()
    doc["mirror"][0].update(prefix="assets/", include=include, exclude=exclude)
    [mirror] = load_config(write(tmp_path, to_toml(doc)), NO_AWS_ENV).mirrors
    assert [k for k in kept if not mirror.selects("assets/" + k)] == []
    assert [k for k in left_out if mirror.selects("assets/" + k)] == []


# [[mirror]] keys on what is written and what follows a change (issue 15, items 2, 6, 7).


def test_mirror_output_keys(tmp_path: Path) -> None:
    doc = minimal()
    doc["mirror"][0].update(
        file_mode="0640",
        dir_mode="750",
        group="daemon",
        max_bandwidth="50MB/s",
        on_change=["/usr/bin/touch", "/run/acme/assets-changed"],
        on_change_settle_seconds=0.5,
    )
    [m] = load_config(write(tmp_path, to_toml(doc)), NO_AWS_ENV).mirrors
    assert (m.file_mode, m.dir_mode, m.group, m.gid) == (0o640, 0o750, "daemon", 1)
    assert m.max_bandwidth == 50_000_000
    assert m.on_change == ("/usr/bin/touch", "/run/acme/assets-changed")
    assert m.on_change_settle_seconds == 0.5
    # Left out: what the agent always did, no cap, no hook.
    [d] = load_config(write(tmp_path, to_toml(minimal())), NO_AWS_ENV).mirrors
    assert (d.file_mode, d.dir_mode, d.group, d.gid) == (None, None, "", None)
    assert (d.max_bandwidth, d.on_change, d.on_change_settle_seconds) == (0, (), 2.0)


@pytest.mark.parametrize(
    ("text", "rate"),
    [
        ("50MB/s", 50_000_000),
        ("10MiB/s", 10 * 1024**2),
        ("512KiB/s", 512 * 1024),
        ("1.5GB/s", 1_500_000_000),
        ("2 kB/s", 2000),
        ("1KiB/s", 1024),
    ],
)
def test_bandwidth_units(tmp_path: Path, text: str, rate: int) -> None:
    doc = minimal()
    doc["mirror"][0]["max_bandwidth"] = text
    assert load_config(write(tmp_path, to_toml(doc)), NO_AWS_ENV).mirrors[0].max_bandwidth == rate


MIRROR_OUTPUT_INVALID = [
    (put("mirror[0]", file_mode="644x"), "mirror[0].file_mode", "octal"),
    (put("mirror[0]", file_mode="0o644"), "mirror[0].file_mode", "octal"),
    (put("mirror[0]", file_mode="4755"), "mirror[0].file_mode", "octal"),
    (put("mirror[0]", file_mode=644), "mirror[0].file_mode", "octal mode string"),
    (put("mirror[0]", dir_mode="2775"), "mirror[0].dir_mode", "octal"),
    (put("mirror[0]", dir_mode="0644"), "mirror[0].dir_mode", "owner"),
    (put("mirror[0]", group="no-such-group-s3pull"), "mirror[0].group", "no group"),
    (put("mirror[0]", max_bandwidth="fast"), "mirror[0].max_bandwidth", "rate"),
    (put("mirror[0]", max_bandwidth="10Mbps"), "mirror[0].max_bandwidth", "rate"),
    (put("mirror[0]", max_bandwidth="10MB"), "mirror[0].max_bandwidth", "rate"),
    (put("mirror[0]", max_bandwidth="100B/s"), "mirror[0].max_bandwidth", "at least"),
    (put("mirror[0]", max_bandwidth=50), "mirror[0].max_bandwidth", "rate"),
    (put("mirror[0]", on_change=[]), "mirror[0].on_change", "non-empty"),
    (put("mirror[0]", on_change="touch /x"), "mirror[0].on_change", "array"),
    (put("mirror[0]", on_change=["", "x"]), "mirror[0].on_change[0]", "program"),
    (put("mirror[0]", on_change_settle_seconds=-1), "mirror[0].on_change_settle_seconds", "0"),
    (put("mirror[0]", on_change_settle_seconds="2"), "mirror[0].on_change_settle_seconds", "got"),
    (put("mirror[0]", on_change_settle_seconds=True), "mirror[0].on_change_settle_seconds", "got"),
]


@pytest.mark.parametrize(
    ("edit", "key", "word"),
    MIRROR_OUTPUT_INVALID,
    ids=[f"{c[1]}:{c[2]}" for c in MIRROR_OUTPUT_INVALID],
)
def test_invalid_mirror_output(tmp_path: Path, edit: Edit, key: str, word: str) -> None:
    test_invalid(tmp_path, edit, key, word)

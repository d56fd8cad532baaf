"""Configuration: one TOML file -> frozen, typed records, validated once at start.

This is the one module that reads the configuration file, and the environment for
settings. Every problem becomes a ConfigError that names the file, the dotted key
(`queue.wait_time_seconds`, `mirror[1].directory`) and what is wrong, so `s3pull` can
exit 78 with a message an operator can act on. Nothing is silently ignored.
"""

from __future__ import annotations

import difflib
import grp
import ipaddress
import os
import re
import string
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal, TypeVar, cast, get_args
from urllib.parse import urlsplit

from s3pull.errors import ConfigError
from s3pull.filters import ALL, key_filter, pattern_problem
from s3pull.guard import DeleteLimit

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "AgentConfig",
    "Archived",
    "AwsConfig",
    "Config",
    "MetricsConfig",
    "MirrorConfig",
    "QueueConfig",
    "TriggerConfig",
    "default_config_path",
    "load_config",
    "parse_config",
]

DEFAULT_CONFIG_PATH = Path("/etc/s3pull/s3pull.toml")


def default_config_path(environ: Mapping[str, str] = os.environ) -> Path:
    """The config file to use without `--config`: `$S3PULL_CONFIG`, then the default."""
    return Path(environ.get("S3PULL_CONFIG") or DEFAULT_CONFIG_PATH)


# `[[mirror]] archived`: what to do with an object S3 has archived and not restored.
Archived = Literal["skip", "restore"]


# The records. TOML keys are exactly their field names, so a field's default is the
# TOML default and the allowed keys of a table are the fields of its record.


@dataclass(frozen=True, slots=True)
class AwsConfig:
    """`[aws]`: where to reach AWS."""

    region: str | None = None  # None: not configured and not in the environment either
    endpoint_url: str | None = None  # one endpoint for S3, SNS and SQS (emulators)


@dataclass(frozen=True, slots=True)
class QueueConfig:
    """`[queue]`: a fixed queue (`url`) or a per-server queue fed by `topic_arn`."""

    url: str | None = None
    topic_arn: str | None = None
    name: str = "s3pull-{instance_id}"
    wait_time_seconds: int = 20
    visibility_timeout: int = 60
    max_receive_count: int = 5
    # With `url`: the SNS topics whose envelopes are accepted; () = those the queue's
    # policy lets send (sources.load_trust). With `topic_arn`, only that topic.
    accept_topics: tuple[str, ...] = ()

    @property
    def topic_region(self) -> str | None:
        """The region ``topic_arn`` names (arn:aws:sns:REGION:ACCOUNT:NAME)."""
        return self.topic_arn.split(":")[3] if self.topic_arn else None

    def queue_name(self, instance_id: str) -> str:
        """The per-server queue name: `name` with `{instance_id}` filled in."""
        return self.name.format(instance_id=instance_id)


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """`[agent]`: the agent's own state and limits."""

    state_directory: Path = Path("/var/lib/s3pull")
    instance_id: str = ""  # "": ask instance metadata
    concurrency: int = 32


class _Folder:
    """What mirrors and triggers share: a bucket and a folder in it (a prefix ending in
    '/', or "" for the whole bucket)."""

    __slots__ = ()
    bucket: str
    prefix: str

    def covers(self, bucket: str, key: str) -> bool:
        """Whether `s3://bucket/key` lies in this folder."""
        return bucket == self.bucket and key.startswith(self.prefix)


@dataclass(frozen=True, slots=True)
class MirrorConfig(_Folder):
    """`[[mirror]]`: keep `directory` equal to `s3://bucket/prefix`."""

    name: str
    bucket: str
    prefix: str
    directory: Path
    delete: bool = True
    # Which keys below the prefix the mirror keeps (filters.py); the rest is left alone.
    include: tuple[str, ...] = ALL
    exclude: tuple[str, ...] = ()
    max_delete: DeleteLimit | None = None  # None: only an empty listing is held back
    reconcile_interval: float = 6 * 3600.0  # seconds between full reconciles; 0: never
    # A GLACIER / DEEP_ARCHIVE object not restored cannot be read (InvalidObjectState):
    # "skip" logs and counts it, "restore" asks S3 to restore it and fetches it on
    # ObjectRestore:Completed. Either way the message is acknowledged, never dead-lettered.
    archived: Archived = "skip"
    # Files and directories written (issue 15): modes, and a group ("" = the agent's own).
    # None: not set, so new files get 0644 and new directories 0755, and what exists keeps
    # whatever mode an operator gave it; once set, a mode changed by hand is put back.
    file_mode: int | None = None
    dir_mode: int | None = None
    group: str = ""
    max_bandwidth: int = 0  # bytes per second over all this mirror's downloads; 0 = no cap
    on_change: tuple[str, ...] = ()  # argv run once changes settle; () = none
    on_change_settle_seconds: float = 2.0

    def selects(self, key: str) -> bool:
        """Whether the mirror keeps `key` (a key this mirror covers) by its filters."""
        return key_filter(self.include, self.exclude).selects(key[len(self.prefix) :])

    @property
    def gid(self) -> int | None:
        """The id of ``group`` now (None when unset or since deleted from the system)."""
        if not self.group:
            return None
        try:
            return grp.getgrnam(self.group).gr_gid
        except KeyError:
            return None


@dataclass(frozen=True, slots=True)
class TriggerConfig(_Folder):
    """`[[trigger]]`: run `command` once a batch under `prefix` is completed by `marker`."""

    name: str
    bucket: str
    prefix: str
    marker: str
    directory: Path
    command: tuple[str, ...]
    timeout_seconds: int = 3600
    manifest_timeout_seconds: int = 300
    queue_url: str = ""  # "": batches arrive on the server's own queue
    max_parallel: int = 1  # batches of this trigger running at once
    environment: tuple[tuple[str, str], ...] = ()  # added to the command's clean environment
    results: str = ""  # "s3://bucket/prefix/": each run's outcome and output; "": none

    @property
    def results_location(self) -> tuple[str, str] | None:
        """(bucket, folder) of ``results``, or None when results are not written."""
        if not self.results:
            return None
        bucket, _, prefix = self.results.removeprefix("s3://").partition("/")
        return bucket, prefix


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """`[metrics]`: where to serve Prometheus text."""

    listen: str  # "HOST:PORT", or "[IPV6]:PORT"

    @property
    def host(self) -> str:
        """The host part of `listen`, without IPv6 brackets."""
        return _split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        """The port part of `listen`."""
        return _split_listen(self.listen)[1]


@dataclass(frozen=True, slots=True)
class Config:
    """The whole validated configuration, and the file it came from."""

    path: Path
    aws: AwsConfig
    queue: QueueConfig
    agent: AgentConfig
    mirrors: tuple[MirrorConfig, ...]
    triggers: tuple[TriggerConfig, ...]
    metrics: MetricsConfig | None = None


def load_config(path: Path, environ: Mapping[str, str] = os.environ) -> Config:
    """Read and validate the config file at `path`; raise ConfigError on any problem."""
    try:
        # Bytes, then decode: text mode would turn a stray "\r" into a newline.
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(str(path), "", "no such file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), "", f"is not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(str(path), "", f"cannot be read: {exc.strerror or exc}") from None
    return parse_config(text, path, environ)


def parse_config(text: str, path: Path, environ: Mapping[str, str] = os.environ) -> Config:
    """Validate the TOML `text` of the file at `path`; raise ConfigError on any problem."""
    try:
        return _parse(text, path, environ)
    except _Invalid as exc:
        raise ConfigError(str(path), exc.key, exc.problem) from None


# Parsing. Helpers raise _Invalid(key, problem); parse_config adds the file name.


class _Invalid(Exception):
    def __init__(self, key: str, problem: str) -> None:
        super().__init__(key, problem)
        self.key = key
        self.problem = problem


_TOP_LEVEL = ("aws", "queue", "agent", "mirror", "trigger", "metrics")


def _parse(text: str, path: Path, environ: Mapping[str, str]) -> Config:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _Invalid("", f"is not valid TOML: {exc}") from None
    # First, before any key is named in a message or any value is used.
    _reject_control_characters(doc, "")
    _reject_unknown(doc, "", _TOP_LEVEL)

    aws = _aws(_section(doc, "aws", AwsConfig), environ)
    agent = _agent(_section(doc, "agent", AgentConfig))
    queue = _queue(_section(doc, "queue", QueueConfig, required=True), agent)
    mirrors = tuple(_mirror(t) for t in _array(doc, "mirror", MirrorConfig))
    triggers = tuple(_trigger(t) for t in _array(doc, "trigger", TriggerConfig))
    metrics = _metrics(_section(doc, "metrics", MetricsConfig)) if "metrics" in doc else None

    if not mirrors and not triggers:
        raise _Invalid("mirror", "at least one [[mirror]] or [[trigger]] is required")
    _check_unique_names("mirror", mirrors)
    _check_unique_names("trigger", triggers)
    _check_directories(agent, mirrors, triggers)
    return Config(path, aws, queue, agent, mirrors, triggers, metrics)


def _aws(t: _Table, environ: Mapping[str, str]) -> AwsConfig:
    region = _optional_str(t, "region", _region_problem)
    if region is None:
        # The AWS SDKs' order. Instance metadata, the last resort, is identity.py's job.
        region = environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or None
    return AwsConfig(region=region, endpoint_url=_optional_str(t, "endpoint_url", _url_problem))


def _agent(t: _Table) -> AgentConfig:
    return AgentConfig(
        state_directory=_path(t, "state_directory"),
        instance_id=_str(t, "instance_id"),
        concurrency=_int(t, "concurrency", 1, 1024),
    )


def _queue(t: _Table, agent: AgentConfig) -> QueueConfig:
    url = _optional_str(t, "url", _url_problem)
    topic_arn = _optional_str(t, "topic_arn", _topic_arn_problem)
    if url is not None and topic_arn is not None:
        raise t.invalid("topic_arn", "cannot be used together with queue.url: set only one")
    if url is None and topic_arn is None:
        raise _Invalid(
            "queue", "set either url or topic_arn (a fixed queue, or one queue per server)"
        )
    queue = QueueConfig(
        url=url,
        topic_arn=topic_arn,
        name=_str(t, "name", _queue_template_problem),
        # SQS limits: ReceiveMessage WaitTimeSeconds 0..20 (0 would be a busy loop),
        # VisibilityTimeout 0..43200, RedrivePolicy maxReceiveCount 1..1000.
        wait_time_seconds=_int(t, "wait_time_seconds", 1, 20),
        visibility_timeout=_int(t, "visibility_timeout", 1, 43200),
        max_receive_count=_int(t, "max_receive_count", 1, 1000),
        accept_topics=_accept_topics(t, topic_arn),
    )
    if topic_arn is not None:  # only then is the name used: check what it will become
        _check_queue_name(t, queue, agent.instance_id)
    return queue


def _accept_topics(t: _Table, topic_arn: str | None) -> tuple[str, ...]:
    topics = _present(t, "accept_topics", list, "an array of SNS topic ARNs")
    if topics is None:
        return ()
    if topic_arn is not None:
        raise t.invalid(
            "accept_topics",
            "is only for a fixed queue.url: with topic_arn, that topic alone is accepted",
        )
    if not topics:
        raise t.invalid(
            "accept_topics",
            "must list at least one topic ARN; leave it out to accept the topics the queue's"
            " policy lets send",
        )
    for i, topic in enumerate(topics):
        if not isinstance(topic, str):
            raise t.invalid(f"accept_topics[{i}]", f"must be a string, got {_describe(topic)}")
        if (problem := _topic_arn_problem(topic)) is not None:
            raise t.invalid(f"accept_topics[{i}]", problem)
    return tuple(topics)


def _check_queue_name(t: _Table, queue: QueueConfig, instance_id: str) -> None:
    if instance_id and not _QUEUE_NAME_CHARS.fullmatch(instance_id):
        raise _Invalid(
            "agent.instance_id",
            "may contain only letters, digits, '_' and '-' because it goes into "
            f"queue.name, got {instance_id!r}",
        )
    # Without an override the id comes from instance metadata later: check the length
    # with one of the shape EC2 uses.
    rendered = queue.queue_name(instance_id or _SAMPLE_INSTANCE_ID)
    if len(rendered) > _QUEUE_NAME_MAX:
        raise t.invalid(
            "name",
            f"gives a queue name of {len(rendered)} characters ({rendered!r}); "
            f"SQS allows at most {_QUEUE_NAME_MAX}",
        )


def _mirror(t: _Table) -> MirrorConfig:
    return MirrorConfig(
        name=_str(t, "name", _name_problem),
        bucket=_str(t, "bucket", _bucket_problem),
        prefix=_prefix(t, "prefix"),
        directory=_path(t, "directory"),
        delete=_bool(t, "delete"),
        include=_patterns(t, "include", ALL),
        exclude=_patterns(t, "exclude", ()),
        max_delete=_max_delete(t, "max_delete"),
        reconcile_interval=_duration(t, "reconcile_interval"),
        archived=_archived(t, "archived"),
        **_mirror_output(t),
    )


def _patterns(t: _Table, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    patterns = _present(t, name, list, 'an array of glob patterns, like ["**/*.tmp"]')
    if patterns is None:
        return default
    if not patterns and name == "include":
        raise t.invalid(name, "must list at least one pattern; leave it out to keep every key")
    for i, pattern in enumerate(patterns):
        if not isinstance(pattern, str):
            raise t.invalid(f"{name}[{i}]", f"must be a string, got {_describe(pattern)}")
        if (problem := pattern_problem(pattern)) is not None:
            raise t.invalid(f"{name}[{i}]", problem)
    return tuple(patterns)


_PERCENT = re.compile(r"([0-9]{1,3}(?:\.[0-9]+)?)%")


def _max_delete(t: _Table, name: str) -> DeleteLimit | None:
    what = 'a count of files like 100, or a percentage of the mirror like "10%"'
    if name not in t.data:
        return None
    value = t.data[name]
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return DeleteLimit(count=value)
    if isinstance(value, str) and (match := _PERCENT.fullmatch(value)):
        percent = float(match.group(1))
        if percent <= 100:
            return DeleteLimit(percent=percent)
        raise t.invalid(name, f"must be a percentage between 0% and 100%, got {value!r}")
    raise t.invalid(name, f"must be {what}, got {_describe(value)}")


_DURATION = re.compile(r"([0-9]+)([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(t: _Table, name: str) -> float:
    value = _present(t, name, str, 'a duration like "6h", "30m" or "90s", or "0" for never')
    if value is None:
        return float(_default(t, name, float))
    if value == "0":
        return 0.0
    match = _DURATION.fullmatch(value)
    if match is None:
        raise t.invalid(
            name, f'must be a duration like "6h", "30m" or "90s", or "0" for never, got {value!r}'
        )
    return float(int(match.group(1)) * _UNIT_SECONDS[match.group(2)])


def _archived(t: _Table, name: str) -> Archived:
    value = _str(t, name)
    for choice in get_args(Archived):
        if value == choice:
            return cast(Archived, choice)
    raise t.invalid(name, f'must be "skip" or "restore", got {value!r}')


# [[mirror]] keys on what the mirror writes and what follows a change (issue 15).

_MODE = re.compile(r"0?[0-7]{3}")
_BANDWIDTH = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([kKMG]?i?B)/s\s*")
_BANDWIDTH_UNITS = {
    "B": 1,
    "kB": 1000,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
}
_SETTLE_MAX_SECONDS = 3600.0


def _mirror_output(t: _Table) -> dict[str, Any]:
    return {
        "file_mode": _mode(t, "file_mode", 0o000),
        # The agent (the owner) must be able to create and rename files in them.
        "dir_mode": _mode(t, "dir_mode", 0o700),
        "group": _group(t, "group"),
        "max_bandwidth": _bandwidth(t, "max_bandwidth"),
        "on_change": _command(t, "on_change") if "on_change" in t.data else (),
        "on_change_settle_seconds": _seconds(t, "on_change_settle_seconds", _SETTLE_MAX_SECONDS),
    }


def _mode(t: _Table, name: str, owner_needs: int) -> int | None:
    value = _present(t, name, str, 'an octal mode string like "0644"')
    if value is None:
        return None
    if not _MODE.fullmatch(value):
        # Set-id and sticky bits are refused too: the packaged service may not set them
        # (RestrictSUIDSGID=yes), and a set-id bit on downloaded content is never wanted.
        raise t.invalid(
            name,
            f'must be an octal permission mode of 3 digits like "0644" (0-7 each), got {value!r}',
        )
    mode = int(value, 8)
    if mode & owner_needs != owner_needs:
        raise t.invalid(
            name,
            f'must give the owner (the agent) rwx, like "0755" or "0750", got {value!r}:'
            " the agent creates and renames files in these directories",
        )
    return mode


def _group(t: _Table, name: str) -> str:
    value = _str(t, name)
    if value:
        try:
            grp.getgrnam(value)
        except KeyError:
            raise t.invalid(name, f"no group {value!r} on this system (see getent group)") from None
    return value


def _bandwidth(t: _Table, name: str) -> int:
    value = _present(t, name, str, 'a rate like "50MB/s" or "10MiB/s"')
    if value is None:
        return 0
    match = _BANDWIDTH.fullmatch(value)
    if match is None or match[2] not in _BANDWIDTH_UNITS:
        raise t.invalid(
            name,
            'must be a rate like "50MB/s", "512KiB/s" or "1GB/s" (B, kB, MB, GB, KiB, MiB,'
            f" GiB per second), got {value!r}",
        )
    rate = int(float(match[1]) * _BANDWIDTH_UNITS[match[2]])
    if rate < 1024:
        raise t.invalid(name, f"must be at least 1KiB/s, got {value!r}")
    return rate


def _seconds(t: _Table, name: str, hi: float) -> float:
    what = f"a number of seconds between 0 and {hi:g}"
    if name not in t.data:
        return float(_default(t, name, float))
    value = t.data[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise t.invalid(name, f"must be {what}, got {_describe(value)}")
    if not 0 <= value <= hi:
        raise t.invalid(name, f"must be {what}, got {value}")
    return float(value)


def _trigger(t: _Table) -> TriggerConfig:
    return TriggerConfig(
        name=_str(t, "name", _name_problem),
        bucket=_str(t, "bucket", _bucket_problem),
        prefix=_prefix(t, "prefix"),
        marker=_str(t, "marker", _marker_problem),
        directory=_path(t, "directory"),
        command=_command(t, "command"),
        # Capped at SQS's 12 hours: a message cannot be kept invisible for longer, so a
        # longer run would see its batch redelivered while it is still working.
        timeout_seconds=_int(t, "timeout_seconds", 1, 43200),
        manifest_timeout_seconds=_int(t, "manifest_timeout_seconds", 0, 43200),
        queue_url=_str(t, "queue_url", _optional_url_problem),
        max_parallel=_int(t, "max_parallel", 1, 1000),
        environment=_environment(t, "environment"),
        results=_results(t, "results"),
    )


def _results(t: _Table, name: str) -> str:
    """``s3://bucket/prefix/``, the prefix a folder like any other ("results" means
    "results/"), and never among the trigger's own batches: a result written into a
    batch would be listed, downloaded and handed to the next run as one of its files."""
    value = _str(t, name, _results_problem, default="")
    if not value:
        return ""
    bucket, _, prefix = value.removeprefix("s3://").partition("/")
    folder = prefix if prefix == "" or prefix.endswith("/") else prefix + "/"
    own_bucket, own_prefix = t.data.get("bucket"), _prefix(t, "prefix")
    # A result is written at <folder><batch prefix>, and the batch prefix starts with the
    # trigger's own: so a folder "" lands in the batch as surely as one inside it.
    if bucket == own_bucket and (folder + own_prefix).startswith(own_prefix):
        raise t.invalid(
            name,
            f"must not lie inside the trigger's own folder s3://{bucket}/{own_prefix}"
            f" (results would be listed as batch files), got {value!r}",
        )
    return f"s3://{bucket}/{folder}"


def _results_problem(value: str) -> str | None:
    if value == "":
        return None
    shape = f"must be an S3 location like 's3://bucket/results/', got {value!r}"
    if not value.startswith("s3://"):
        return shape
    bucket, _, prefix = value.removeprefix("s3://").partition("/")
    if _bucket_problem(bucket) is not None:
        return f"{shape} (the bucket name {bucket!r} is not valid)"
    if (problem := _prefix_problem(prefix)) is not None:
        return f"{shape}: its prefix {problem}"
    return None


def _metrics(t: _Table) -> MetricsConfig:
    return MetricsConfig(listen=_str(t, "listen", _listen_problem))


def _check_unique_names(kind: str, records: Sequence[MirrorConfig | TriggerConfig]) -> None:
    # Names label metrics, log lines and ledger rows, so two must never share one.
    first: dict[str, int] = {}
    for i, record in enumerate(records):
        if record.name in first:
            raise _Invalid(
                f"{kind}[{i}].name",
                f"must be unique, but {kind}[{first[record.name]}] is also named {record.name!r}",
            )
        first[record.name] = i


def _check_directories(
    agent: AgentConfig, mirrors: Sequence[MirrorConfig], triggers: Sequence[TriggerConfig]
) -> None:
    # A directory is owned by one mirror or trigger: a reconcile deletes what its prefix
    # does not hold, so a nested or shared directory would have one erase the other's
    # files. The ledger must not live among synced files for the same reason.
    groups: dict[str, Sequence[MirrorConfig | TriggerConfig]] = {
        "mirror": mirrors,
        "trigger": triggers,
    }
    claimed: list[tuple[str, Path]] = []  # (owner, directory), in file order
    for kind, records in groups.items():
        for i, record in enumerate(records):
            for owner, other in claimed:
                if relation := _overlap(record.directory, other):
                    raise _Invalid(
                        f"{kind}[{i}].directory",
                        f"{relation} the directory of {owner} ({other}); "
                        "directories must not overlap",
                    )
            claimed.append((f"{kind} {record.name!r}", record.directory))
    for owner, other in claimed:
        if relation := _overlap(agent.state_directory, other):
            raise _Invalid(
                "agent.state_directory",
                f"{relation} the directory of {owner} ({other}); "
                "the agent's state must be kept apart from synced files",
            )


def _overlap(directory: Path, other: Path) -> str | None:
    """How `directory` overlaps `other`, in words; None when they are apart."""
    if directory == other:
        return "is the same as"
    if directory.is_relative_to(other):
        return "is inside"
    if other.is_relative_to(directory):
        return "contains"
    return None


# Control characters. No setting has a use for one, and each is a way to break what the
# configuration reaches: a newline in a directory would end the ReadWritePaths= line of
# the systemd drop-in that s3pull-setup writes and start a line of its own (issue 12),
# one in a name or prefix forges log lines, a NUL cuts a path or an argv element short.
# So every string of the file, and every key, is checked here, once, whatever reads it
# later: C0 (tab and newline included), DEL and C1, the Unicode category Cc.

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROL_NAMES = {
    "\0": "a NUL",
    "\t": "a tab",
    "\n": "a newline",
    "\r": "a carriage return",
    "\x1b": "an escape",
    "\x7f": "a DEL",
    "\x85": "a next line",
}


def _reject_control_characters(value: object, where: str) -> None:
    if isinstance(value, str):
        if match := _CONTROL.search(value):
            char = match.group()
            name = _CONTROL_NAMES.get(char, "a control character")
            raise _Invalid(
                where,
                "must not contain control characters, found "
                f"{name} (U+{ord(char):04X}) at character {match.start() + 1} of {value!r}",
            )
    elif isinstance(value, dict):
        for key, item in value.items():
            shown = repr(key) if _CONTROL.search(key) else key
            inner = f"{where}.{shown}" if where else shown
            if shown != key:
                raise _Invalid(inner, "a key must not contain control characters")
            _reject_control_characters(item, inner)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _reject_control_characters(item, f"{where}[{i}]")


# Tables, and typed reads from them.


@dataclass(frozen=True, slots=True)
class _Table:
    """A TOML table, its dotted name for messages, and the record it becomes."""

    where: str
    data: Mapping[str, object]
    record: type[Any]

    def invalid(self, name: str, problem: str) -> _Invalid:
        return _Invalid(f"{self.where}.{name}", problem)


def _section(
    doc: Mapping[str, object], name: str, record: type[Any], *, required: bool = False
) -> _Table:
    if name not in doc:
        if required:
            raise _Invalid(name, f"required table [{name}] is missing")
        return _table({}, name, record)
    value = doc[name]
    if not isinstance(value, dict):
        raise _Invalid(name, f"must be a table [{name}], got {_describe(value)}")
    return _table(value, name, record)


def _array(doc: Mapping[str, object], name: str, record: type[Any]) -> list[_Table]:
    value = doc.get(name, [])
    if isinstance(value, dict):
        raise _Invalid(name, f"must be an array of tables: write [[{name}]], not [{name}]")
    if not isinstance(value, list):
        raise _Invalid(name, f"must be an array of tables [[{name}]], got {_describe(value)}")
    tables = []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise _Invalid(f"{name}[{i}]", f"must be a table, got {_describe(item)}")
        tables.append(_table(item, f"{name}[{i}]", record))
    return tables


def _table(data: Mapping[str, object], where: str, record: type[Any]) -> _Table:
    _reject_unknown(data, where, [f.name for f in fields(record)])
    return _Table(where, data, record)


def _reject_unknown(data: Mapping[str, object], where: str, allowed: Iterable[str]) -> None:
    allowed = list(allowed)
    for name in data:
        if name not in allowed:
            close = difflib.get_close_matches(name, allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise _Invalid(f"{where}.{name}" if where else name, f"unknown key{hint}")


_T = TypeVar("_T")

# A check returns what is wrong with a value, or None when it is fine.
_Check = Callable[[str], str | None]


def _present(t: _Table, name: str, kind: type[_T], what: str) -> _T | None:
    """The value at `name` if it is a `kind`; None when the key is absent."""
    if name not in t.data:
        return None
    value = t.data[name]
    # bool is a subclass of int, yet `wait_time_seconds = true` is a mistake, not a 1.
    if isinstance(value, kind) and (kind is bool or not isinstance(value, bool)):
        return value
    raise t.invalid(name, f"must be {what}, got {_describe(value)}")


def _default(t: _Table, name: str, kind: type[_T]) -> _T:
    """The record's default for an absent key; a field without one is required."""
    for field in fields(t.record):
        if field.name == name and isinstance(field.default, kind):
            return field.default
    raise t.invalid(name, "required key is missing")


def _str(t: _Table, name: str, check: _Check | None = None, default: str | None = None) -> str:
    value = _present(t, name, str, "a string")
    if value is None:
        return default if default is not None else _default(t, name, str)
    if check is not None and (problem := check(value)) is not None:
        raise t.invalid(name, problem)
    return value


def _optional_str(t: _Table, name: str, check: _Check) -> str | None:
    return _str(t, name, check) if name in t.data else None


def _int(t: _Table, name: str, lo: int, hi: int) -> int:
    what = f"an integer between {lo} and {hi}"
    value = _present(t, name, int, what)
    if value is None:
        return _default(t, name, int)
    if not lo <= value <= hi:
        raise t.invalid(name, f"must be {what}, got {value}")
    return value


def _bool(t: _Table, name: str) -> bool:
    value = _present(t, name, bool, "true or false")
    return _default(t, name, bool) if value is None else value


def _path(t: _Table, name: str) -> Path:
    value = _present(t, name, str, "an absolute path")
    if value is None:
        return _default(t, name, Path)
    if not os.path.isabs(value):
        raise t.invalid(name, f"must be an absolute path, got {value!r}")
    # Lexical only: symlinks are not resolved and the directory need not exist yet.
    # POSIX keeps a leading "//" as implementation-defined; on Linux it is "/".
    return Path("/" + os.path.normpath(value).lstrip("/"))


def _command(t: _Table, name: str) -> tuple[str, ...]:
    argv = _present(t, name, list, "a non-empty array of strings")
    if argv is None:
        return _default(t, name, tuple)
    if not argv:
        raise t.invalid(name, "must be a non-empty array of strings: the program and its arguments")
    for i, arg in enumerate(argv):
        # Run without a shell, so each element goes to execve() exactly as written.
        if not isinstance(arg, str):
            raise t.invalid(f"{name}[{i}]", f"must be a string, got {_describe(arg)}")
    if not argv[0]:
        raise t.invalid(f"{name}[0]", "must name the program to run, got ''")
    return tuple(argv)


# POSIX portable names; the S3PULL_ ones are what the agent tells the command.
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _environment(t: _Table, name: str) -> tuple[tuple[str, str], ...]:
    table = _present(t, name, dict, 'a table of names to strings, like { ACME_ENV = "prod" }')
    if table is None:
        return ()
    for key, value in table.items():
        if not _ENV_NAME.fullmatch(key):
            raise t.invalid(
                name, f"{key!r} is not a variable name (letters, digits, '_'; no leading digit)"
            )
        if key.upper().startswith("S3PULL_"):
            raise t.invalid(name, f"{key!r}: the S3PULL_* variables are the agent's to set")
        if not isinstance(value, str):
            raise t.invalid(f"{name}.{key}", f"must be a string, got {_describe(value)}")
        # Control characters were refused with every other string of the file.
    return tuple(table.items())


def _describe(value: object) -> str:
    """A value as TOML would call it, for "must be X, got Y" messages."""
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"float {value}"
    if isinstance(value, str):
        return f"string {value!r}"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return f"date/time {value}"  # the rest of what tomllib returns: datetime, date, time


# Checks of single values.

# https://docs.aws.amazon.com/AmazonS3/latest/userguide/bucketnamingrules.html
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_REGION = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")
# arn:PARTITION:sns:REGION:ACCOUNT:NAME; S3 cannot publish to FIFO topics, so no ".fifo".
_TOPIC_ARN = re.compile(r"arn:aws[a-z-]*:sns:[a-z0-9-]+:[0-9]{12}:[A-Za-z0-9_-]{1,256}")
# SQS queue names: 1-80 of these (".fifo" is for FIFO queues, which SNS-from-S3 cannot feed).
_QUEUE_NAME_CHARS = re.compile(r"[A-Za-z0-9_-]+")
_QUEUE_NAME_MAX = 80
_SAMPLE_INSTANCE_ID = "i-0123456789abcdef0"
_LISTEN_HOST = re.compile(r"[A-Za-z0-9.-]+")


def _name_problem(value: str) -> str | None:
    if _NAME.fullmatch(value):
        return None
    return f"must be a non-empty name of letters, digits, '_', '.' and '-', got {value!r}"


def _bucket_problem(value: str) -> str | None:
    if _BUCKET.fullmatch(value) and ".." not in value and not _is_ip_address(value):
        return None
    return (
        "must be a valid S3 bucket name (3-63 lowercase letters, digits, dots and hyphens, "
        f"starting and ending with a letter or digit), got {value!r}"
    )


def _is_ip_address(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _prefix(t: _Table, name: str) -> str:
    """A mirror's or trigger's prefix, always a folder: "" (the whole bucket) or "a/b/".

    Taken as a string prefix, "assets" would also cover "assets-archive/old.txt" and
    put "assets/a.txt" at "/a.txt" below the directory: a reconcile then deletes the
    mirror and fills it from the sibling folder (issue 16). So "assets" means "assets/".
    """
    value = _str(t, name, _prefix_problem, default="")
    return value if value == "" or value.endswith("/") else value + "/"


def _prefix_problem(value: str) -> str | None:
    if value.startswith("/"):
        return f"must not start with '/' (S3 keys have no leading slash), got {value!r}"
    # Each segment is a folder name, so keys below it map onto the directory one to one.
    for segment in value.removesuffix("/").split("/") if value else ():
        if segment in ("", ".", ".."):
            shown = "an empty folder name ('//')" if segment == "" else f"a {segment!r} folder"
            return f"must be a folder like 'assets/' or 'a/b/', got {value!r} with {shown}"
    return None


def _marker_problem(value: str) -> str | None:
    if value in ("", ".", "..") or "/" in value:
        return f"must be a file base name (not empty, '.' or '..', no '/'), got {value!r}"
    return None


def _url_problem(value: str) -> str | None:
    try:
        parts = urlsplit(value)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:  # e.g. an unclosed "[" of an IPv6 host
        valid = False
    return None if valid else f"must be an http:// or https:// URL, got {value!r}"


def _optional_url_problem(value: str) -> str | None:
    return None if value == "" else _url_problem(value)


def _topic_arn_problem(value: str) -> str | None:
    if _TOPIC_ARN.fullmatch(value):
        return None
    return (
        "must be an SNS topic ARN like arn:aws:sns:eu-west-1:123456789012:s3pull-events, "
        f"got {value!r}"
    )


def _region_problem(value: str) -> str | None:
    return None if _REGION.fullmatch(value) else f"must be a region like eu-west-1, got {value!r}"


def _queue_template_problem(value: str) -> str | None:
    try:
        parts = list(string.Formatter().parse(value))
    except ValueError:
        return f"has an unmatched '{{' or '}}', got {value!r}"
    if not parts:
        return "must not be empty"
    for literal, field, spec, conversion in parts:
        if field is not None and (field != "instance_id" or spec or conversion):
            return f"may use only the placeholder {{instance_id}}, got {value!r}"
        if literal and not _QUEUE_NAME_CHARS.fullmatch(literal):
            return (
                "may contain only letters, digits, '_', '-' and {instance_id} "
                f"(SQS queue name rules), got {value!r}"
            )
    return None


def _split_listen(listen: str) -> tuple[str, int]:
    """`HOST:PORT` or `[IPV6]:PORT` -> (host, port); ValueError when it is neither."""
    host, _, port = listen.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        ipaddress.IPv6Address(host)  # raises ValueError
    elif not _LISTEN_HOST.fullmatch(host):
        raise ValueError(f"bad host in {listen!r}")
    if not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        raise ValueError(f"bad port in {listen!r}")
    return host, int(port)


def _listen_problem(value: str) -> str | None:
    try:
        _split_listen(value)
    except ValueError:
        return (
            "must be HOST:PORT with a port between 1 and 65535, "
            f"like 127.0.0.1:9464 or [::1]:9464, got {value!r}"
        )
    return None

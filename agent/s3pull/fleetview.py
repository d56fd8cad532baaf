"""``s3pull fleet status`` and ``s3pull fleet wait``: every server's agent from one place.

Each server's row joins what its agent published on its queue's tags (``statetags``:
version, phase, applied-through, last error, heartbeat) with what SQS says of the queue
now (waiting, in flight, dead letters) and what EC2 says of the instance (``gc``'s
check). Queues are found as ``gc`` finds them: by the ``[queue] name`` template's prefix
and the ``s3pull:instance-id`` tag.

A server's applied-through is the later of
- what its agent published (proven from its own receives, see ``watermark``), and
- the moment of the read, when the agent says "in sync" and its queue holds nothing,
  visible or in flight: everything that reached the queue before then was deleted, which
  the agent does only once a change is applied or refused. This is what lets an idle
  agent publish nothing and still be seen as current.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Set
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

from botocore.exceptions import ClientError

from s3pull.aws import TRANSIENT_ERRORS, error_code, open_clients
from s3pull.config import Config
from s3pull.errors import ConfigError
from s3pull.fleet import require_topic
from s3pull.logsafe import escape_controls
from s3pull.provision import DEAD_LETTER_SUFFIX, INSTANCE_TAG, instances_alive
from s3pull.publish import HEARTBEAT_INTERVAL_SECONDS
from s3pull.statetags import AgentState
from s3pull.status import queue_depths

__all__ = ["DELIVERY_ALLOWANCE_SECONDS", "Server", "fleet_status_command", "fleet_wait_command"]

State = Literal["in sync", "behind", "stopped", "gone"]

# From an upload to its notification in each queue (S3 -> SNS -> SQS, usually well under
# a second), plus clock differences between SQS and the servers (NTP keeps them far
# below this). `fleet wait` waits for applied-through at TIME + this.
DELIVERY_ALLOWANCE_SECONDS: Final = 5.0
# An agent publishes at least hourly; two missed heartbeats and it is taken as stopped.
SILENT_AFTER: Final = timedelta(seconds=2 * HEARTBEAT_INTERVAL_SECONDS + 600)
WAIT_POLL_SECONDS: Final = 2.0
_DENIED: Final = ("UnauthorizedOperation", "AccessDenied", "AccessDeniedException")


@dataclass(frozen=True, slots=True)
class Server:
    """One server's row, as read at ``observed_at``."""

    queue_name: str
    agent: AgentState
    observed_at: datetime
    alive: bool | None  # None: EC2 would not say
    waiting: int | None = None
    in_flight: int | None = None
    dead_letters: int | None = None
    read_error: str | None = None

    @property
    def instance_id(self) -> str:
        return self.agent.instance_id

    @property
    def silent(self) -> bool:
        heartbeat = self.agent.heartbeat
        return heartbeat is None or self.observed_at - heartbeat > SILENT_AFTER

    @property
    def state(self) -> State:
        if self.alive is False:
            return "gone"
        if self.agent.phase == "stopped" or self.silent:
            return "stopped"
        if (
            self.read_error is None
            and self.agent.phase == "in sync"
            and self.waiting == 0
            and self.in_flight == 0
            and self.dead_letters == 0
        ):
            return "in sync"
        return "behind"

    @property
    def applied_through(self) -> datetime | None:
        published = self.agent.applied_through
        if self.state != "in sync":
            return published
        return max(published, self.observed_at) if published else self.observed_at

    def has(self, target: datetime) -> bool:
        """Has this server applied everything that reached its queue before ``target``?
        Dead letters count against it: the change may be among them."""
        through = self.applied_through
        return (
            self.state != "gone" and not self.dead_letters and bool(through and through >= target)
        )

    def reasons(self) -> list[str]:
        """Why it is not in sync, most telling first."""
        found: list[str] = []
        if self.state == "gone":
            return ["instance no longer exists"]
        if self.agent.phase == "stopped":
            found.append("agent stopped")
        elif self.silent:
            found.append(f"no heartbeat since {_when(self.agent.heartbeat)}")
        elif self.agent.phase is None:
            found.append("its agent publishes no state (not started yet, or older than fleet)")
        elif self.agent.phase != "in sync":
            found.append(f"phase: {self.agent.phase}")
        if self.read_error is not None:
            found.append(f"cannot read the queue: {self.read_error}")
        if self.waiting:
            found.append(f"backlog: {self.waiting} waiting")
        if self.in_flight:
            found.append(f"{self.in_flight} in flight")
        if self.dead_letters:
            found.append(f"{self.dead_letters} dead letter(s) (s3pull dlq list)")
        return found

    def as_json(self) -> dict[str, Any]:
        heartbeat = self.agent.heartbeat
        return {
            "instance_id": self.instance_id,
            "queue": self.queue_name,
            "version": self.agent.version,
            "state": self.state,
            "reasons": self.reasons() if self.state != "in sync" else [],
            "phase": self.agent.phase,
            "applied_through": _iso(self.applied_through),
            "published_applied_through": _iso(self.agent.applied_through),
            "waiting": self.waiting,
            "in_flight": self.in_flight,
            "dead_letters": self.dead_letters,
            "heartbeat": _iso(heartbeat),
            "heartbeat_age_seconds": (
                round((self.observed_at - heartbeat).total_seconds(), 1) if heartbeat else None
            ),
            "last_error": self.agent.last_error,
            "observed_at": _iso(self.observed_at),
        }


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z") if moment else None


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC") if moment else "never"


@dataclass(slots=True)
class Fleet:
    """Reads the fleet's queues; remembers what EC2 said about each instance."""

    sqs: Any
    ec2: Any
    name_prefix: str
    alive: dict[str, bool | None] = field(default_factory=dict)

    async def queues(self) -> list[tuple[str, str, dict[str, str]]]:
        """(name, url, tags) of every s3pull queue under the prefix."""
        found = []
        paginator = self.sqs.get_paginator("list_queues")
        async for page in paginator.paginate(QueueNamePrefix=self.name_prefix):
            for url in page.get("QueueUrls", ()):
                name = url.rsplit("/", 1)[1]
                if name.endswith(DEAD_LETTER_SUFFIX):
                    continue
                tags = (await self.sqs.list_queue_tags(QueueUrl=url)).get("Tags", {})
                if INSTANCE_TAG in tags:  # not provisioned by s3pull otherwise
                    found.append((name, url, tags))
        return found

    async def _check_instances(self, instance_ids: list[str]) -> None:
        unknown = [i for i in instance_ids if i not in self.alive]
        if not unknown:
            return
        try:
            living = await instances_alive(self.ec2, unknown)
        except ClientError as exc:
            if error_code(exc) not in _DENIED:
                raise
            self.alive.update(dict.fromkeys(unknown))  # shown as live, said once
            return
        self.alive.update({i: i in living for i in unknown})

    async def read(self, skip: Set[str] = frozenset()) -> list[Server]:
        """Every server's row; those in ``skip`` (instance ids) only listed, not read."""
        queues = await self.queues()
        await self._check_instances(sorted({tags[INSTANCE_TAG] for _n, _u, tags in queues}))
        rows = await asyncio.gather(
            *(self._row(name, url, tags, skip) for name, url, tags in queues)
        )
        return sorted(rows, key=lambda s: (s.instance_id, s.queue_name))

    async def _row(self, name: str, url: str, tags: dict[str, str], skip: Set[str]) -> Server:
        agent = AgentState.from_tags(tags)
        observed = datetime.now(UTC)
        alive = self.alive.get(agent.instance_id)
        if agent.instance_id in skip or alive is False:
            return Server(name, agent, observed, alive)
        try:
            depths = await queue_depths(self.sqs, url)
        except TRANSIENT_ERRORS as exc:
            return Server(name, agent, observed, alive, read_error=str(exc))
        return Server(
            name,
            agent,
            observed,
            alive,
            waiting=depths["visible"],
            in_flight=depths["in_flight"],
            dead_letters=depths["dead_lettered"] or 0,
        )


def _fleet_region(config: Config) -> str | None:
    return config.aws.region or config.queue.topic_region


def _name_prefix(config: Config, verb: str) -> str:
    require_topic(config, verb)
    return config.queue.name.split("{instance_id}", 1)[0]


# -- fleet status -------------------------------------------------------------------


def summary(servers: list[Server]) -> str:
    live = [s for s in servers if s.state != "gone"]
    in_sync = sum(1 for s in live if s.state == "in sync")
    others = [
        f"{n} {state}"
        for state in ("behind", "stopped")
        if (n := sum(1 for s in live if s.state == state))
    ]
    gone = len(servers) - len(live)
    text = f"{in_sync} of {len(live)} in sync"
    if others:
        text += f" ({', '.join(others)})"
    if gone:
        text += f"; {gone} gone (s3pull gc removes their queues)"
    return text


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


def _print_table(servers: list[Server]) -> None:
    header = (
        "INSTANCE",
        "VERSION",
        "STATE",
        "APPLIED THROUGH",
        "WAITING",
        "IN FLIGHT",
        "DEAD",
        "HEARTBEAT",
        "LAST ERROR / WHY",
    )
    rows: list[tuple[str, ...]] = [header]
    for server in servers:
        row = server.as_json()
        why = "; ".join(server.reasons()) if server.state != "in sync" else ""
        last = " | ".join(part for part in (why, server.agent.last_error or "") if part)
        through = server.applied_through
        rows.append(
            (
                server.instance_id,
                server.agent.version or "?",
                server.state,
                through.strftime("%Y-%m-%d %H:%M:%S") if through else "unknown",
                *(
                    "-" if row[name] is None else str(row[name])
                    for name in ("waiting", "in_flight", "dead_letters")
                ),
                _age(row["heartbeat_age_seconds"]) + (" ago" if row["heartbeat"] else ""),
                last or "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    for r in rows:
        # Tags are written by whoever may tag the queue: escaped, one row one line.
        cells = [escape_controls(c).ljust(w) for c, w in zip(r, widths, strict=False)]
        print("  ".join([*cells, escape_controls(r[-1])]).rstrip())


async def fleet_status_command(config: Config, as_json: bool) -> int:
    prefix = _name_prefix(config, "fleet status")
    async with open_clients(config, "sqs", "ec2", region=_fleet_region(config)) as clients:
        fleet = Fleet(clients.sqs, clients.ec2, prefix)
        servers = await fleet.read()
    live = [s for s in servers if s.state != "gone"]
    ok = bool(live) and all(s.state == "in sync" for s in live)
    if as_json:
        report = {
            "summary": summary(servers),
            "in_sync": sum(1 for s in live if s.state == "in sync"),
            "live": len(live),
            "gone": len(servers) - len(live),
            "ec2_unknown": any(s.alive is None for s in servers),
            "servers": [s.as_json() for s in servers],
        }
        print(json.dumps(report, indent=1))
        return 0 if ok else 1
    if not servers:
        print(f"s3pull fleet: no s3pull queues named {prefix}* (tagged {INSTANCE_TAG})")
        return 1
    print(f"s3pull fleet: {summary(servers)}")
    if any(s.alive is None for s in servers):
        print("  (EC2 DescribeInstances was refused: no server can be flagged as gone)")
    _print_table(servers)
    return 0 if ok else 1


# -- fleet wait ---------------------------------------------------------------------


def parse_since(text: str) -> datetime:
    """An ISO 8601 time; without a zone, UTC. Raises ValueError."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _bucket_and_key(config: Config, key: str) -> tuple[str, str]:
    if key.startswith("s3://"):
        bucket, _, rest = key[5:].partition("/")
        if bucket and rest:
            return bucket, rest
    else:
        buckets = sorted({m.bucket for m in config.mirrors} | {t.bucket for t in config.triggers})
        if len(buckets) == 1:
            return buckets[0], key
    raise ConfigError(
        str(config.path),
        "mirror.bucket",
        f"--key {key!r}: name the bucket (s3://BUCKET/KEY) unless the configuration uses"
        " exactly one bucket",
    )


async def fleet_wait_command(
    config: Config, since: datetime | None, key: str | None, patience: float
) -> int:
    """Exit 0 once every live server has the change; 1 after ``patience`` seconds."""
    prefix = _name_prefix(config, "fleet wait")
    services = ("sqs", "ec2", "s3") if key else ("sqs", "ec2")
    async with open_clients(config, *services, region=_fleet_region(config)) as clients:
        if key is not None:
            bucket, name = _bucket_and_key(config, key)
            head = await clients.s3.head_object(Bucket=bucket, Key=name)
            base: datetime = head["LastModified"].astimezone(UTC)
            what = f"s3://{bucket}/{name} (last modified {_when(base)})"
        else:
            base = since or datetime.now(UTC)
            what = f"every change made up to {_when(base)}"
        target = base + timedelta(seconds=DELIVERY_ALLOWANCE_SECONDS)
        print(f"s3pull fleet: waiting for every live server to have {escape_controls(what)}")
        fleet = Fleet(clients.sqs, clients.ec2, prefix)
        started = time.monotonic()
        done: set[str] = set()
        reported = -1
        while True:
            servers = await fleet.read(skip=done)
            live = [s for s in servers if s.state != "gone"]
            done.update(s.instance_id for s in live if s.instance_id in done or s.has(target))
            behind = [s for s in live if s.instance_id not in done]
            waited = time.monotonic() - started
            if live and len(behind) != reported:
                reported = len(behind)
                print(
                    f"  {len(live) - len(behind)} of {len(live)} have it ({waited:.0f} s)",
                    flush=True,
                )
            if live and not behind:
                print(f"s3pull fleet: all {len(live)} live server(s) have it ({waited:.1f} s)")
                return 0
            if waited >= patience:
                break
            await asyncio.sleep(min(WAIT_POLL_SECONDS, max(0.0, patience - waited)))
    if not live:
        print(f"s3pull fleet: no live servers (no s3pull queues named {prefix}*)")
        return 1
    print(
        f"s3pull fleet: timed out after {patience:.0f} s:"
        f" {len(live) - len(behind)} of {len(live)} live server(s) have it"
    )
    for server in behind:
        through = server.applied_through
        why = "; ".join(server.reasons()) or (
            f"applied through {_when(through)} only" if through else "applied-through unknown"
        )
        print(f"  {server.instance_id}  {server.queue_name}: {escape_controls(why)}")
    return 1

"""What every case shares: the sizes of this mode, the server, the tools, the results."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from s3pull.emulator import client

from .server import MotoProcess
from .tools import Toolbox
from .watch import RenameWatcher

__all__ = ["FULL", "OBJECT_SIZE", "QUICK", "Context", "Results", "Sizes", "delta"]

# "Small objects": big enough to carry a real body and MD5, small enough that every
# case measures per-request cost rather than bandwidth.
OBJECT_SIZE = 2048


@dataclass(frozen=True, slots=True)
class Sizes:
    mode: Literal["quick", "full"]
    full_sync: tuple[int, ...]  # bucket sizes every contender syncs from scratch
    one_change: tuple[int, ...]  # bucket sizes in which one object changes
    change_samples: int  # changes s3pull applies per bucket size (median reported)
    latency_changes: int
    throughput_changes: int
    large_bytes: int
    idle_seconds: float
    fleet_agents: int
    fleet_changes: int
    publish_rate: float  # changes/s while the state-publishing cost is measured
    publish_seconds: float  # each window of that case (idle, then steady changes)
    ceiling_seconds: float  # length of each GET-ceiling measurement
    s3rver_sizes: tuple[int, ...]


QUICK = Sizes(
    mode="quick",
    full_sync=(1000,),
    one_change=(1000,),
    change_samples=5,
    latency_changes=200,
    throughput_changes=300,
    large_bytes=64 << 20,
    idle_seconds=30.0,
    fleet_agents=5,
    fleet_changes=3,
    publish_rate=10.0,
    publish_seconds=30.0,
    ceiling_seconds=2.0,
    s3rver_sizes=(1000,),
)

FULL = Sizes(
    mode="full",
    full_sync=(1000, 10000),
    one_change=(1000, 10000, 50000),
    change_samples=5,
    latency_changes=1000,
    throughput_changes=2000,
    large_bytes=1 << 30,
    idle_seconds=300.0,
    fleet_agents=20,
    fleet_changes=5,
    publish_rate=100.0,
    publish_seconds=300.0,
    ceiling_seconds=4.0,
    s3rver_sizes=(1000, 10000),
)


@dataclass(slots=True)
class Results:
    """Rows per section, in the order they were measured; JSON-ready."""

    sections: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    ceilings: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, section: str, **row: Any) -> dict[str, Any]:
        self.sections.setdefault(section, []).append(row)
        return row

    def rows(self, section: str) -> list[dict[str, Any]]:
        return self.sections.get(section, [])


@dataclass(slots=True)
class Context:
    sizes: Sizes
    moto: MotoProcess
    tools: Toolbox
    work: Path
    logs: Path
    watcher: RenameWatcher
    results: Results = field(default_factory=Results)
    get_connections: int = 4  # the concurrency at which moto served GETs fastest
    _clients: dict[str, Any] = field(default_factory=dict)

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def client(self, service: str) -> Any:
        """A boto3 client on the moto server, made once (the driver's own uploads)."""
        if service not in self._clients:
            self._clients[service] = client(self.moto.endpoint, service)
        return self._clients[service]


def delta(after: Counter[str], before: Counter[str]) -> dict[str, int]:
    """Requests made between two snapshots, by operation."""
    return {name: count for name, count in (after - before).items() if count}

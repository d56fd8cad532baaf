"""Run a command the way triggers (and hooks) do: no shell, a clean environment, its
output in our log, and its whole process group stopped on a timeout, on our shutdown, and
when it exits leaving something behind.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Final

__all__ = [
    "INHERITED_VARIABLES",
    "KILL_GRACE_SECONDS",
    "ProcessGroup",
    "clean_environment",
    "run_command",
    "stop_group",
]

log = logging.getLogger(__name__)

KILL_GRACE_SECONDS: Final = 10.0  # SIGTERM -> this long -> SIGKILL
GROUP_POLL_SECONDS: Final = 0.1  # how often a stopping process group is looked at
PIDFD_SIGNAL_PROCESS_GROUP: Final = 4  # linux/pidfd.h, Linux 6.9 and later
# What a command inherits from the agent besides LC_*: never credentials (AWS_*) or
# anything else the agent was started with (SPEC "Round 2": trigger commands).
INHERITED_VARIABLES: Final = frozenset({"PATH", "HOME", "LANG", "TZ"})
RELAY_CHUNK: Final = 1 << 16


def clean_environment(variables: Mapping[str, str]) -> dict[str, str]:
    """``PATH``, ``HOME``, ``LANG``, ``LC_*`` and ``TZ`` from the agent, then ``variables``."""
    inherited = {
        name: value
        for name, value in os.environ.items()
        if name in INHERITED_VARIABLES or name.startswith("LC_")
    }
    return {**inherited, **variables}


OnLine = Callable[[str, str], None]  # (stream, line): "stdout" or "stderr", no newline


async def run_command(
    argv: Sequence[str],
    cwd: Path,
    env: Mapping[str, str],
    seconds: float,
    tag: str,
    on_line: OnLine | None = None,
    stdin: bytes | None = None,
) -> int:
    """Run ``argv`` (no shell) in ``cwd``; return its exit status.

    Raises TimeoutError once the process group is stopped after ``seconds``. Its
    output is logged line by line under ``tag``, and handed to ``on_line`` too (a
    trigger's result keeps it). ``stdin``, when given, is its standard input (else
    /dev/null); a command that does not read it all is not waited for.
    """
    # No shell: argv exactly as configured. A session of its own makes the command the
    # leader of a process group, so a timeout can stop everything it started.
    process = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        env=dict(env),
        stdin=asyncio.subprocess.DEVNULL if stdin is None else asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    group = ProcessGroup(process.pid)
    assert process.stdout is not None and process.stderr is not None
    relays = [
        asyncio.create_task(_relay(process.stdout, tag, "stdout", on_line)),
        asyncio.create_task(_relay(process.stderr, tag, "stderr", on_line)),
    ]
    if stdin is not None:
        assert process.stdin is not None
        # Fed beside the wait, not before it: a pipe holds 64 KiB, and a command may
        # write a lot of output before it reads.
        relays.append(asyncio.create_task(_feed(process.stdin, stdin)))
    try:
        code = await asyncio.wait_for(process.wait(), seconds)
        group.leader_reaped = True
        # Exit 0 or not, nothing it started outlives it (a daemonised child that made a
        # session of its own is beyond reach here; systemd's cgroup is not).
        if left := await asyncio.to_thread(group.members):
            log.warning(
                "%s: the command left %d process(es) running, stopping its process group",
                tag,
                left,
            )
            await asyncio.shield(stop_group(group, tag))
        return code
    except TimeoutError:
        log.error("%s: timed out after %.0f s, stopping its process group", tag, seconds)
        await stop_group(group, tag)
        await process.wait()
        raise
    except asyncio.CancelledError:
        log.warning("%s: agent stopping, stopping the command's process group", tag)
        await asyncio.shield(stop_group(group, tag))
        raise
    finally:
        group.close()
        # Output still held open by a child that outlived the command is not ours to
        # wait for.
        _done, pending = await asyncio.wait(relays, timeout=1.0)
        for relay in pending:
            relay.cancel()


async def _feed(stream: asyncio.StreamWriter, data: bytes) -> None:
    try:
        stream.write(data)
        await stream.drain()
        stream.close()
    except (BrokenPipeError, ConnectionResetError):
        pass  # it exited, or closed its input, without reading everything: its choice


async def _relay(stream: asyncio.StreamReader, tag: str, name: str, on_line: OnLine | None) -> None:
    """Log a command's output line by line. Read in chunks rather than readline(): a line
    over the reader's limit would stop the relay, fill the pipe and hang the command."""

    def emit(raw: bytes) -> None:
        line = raw.decode("utf-8", errors="replace").rstrip()
        log.info("%s [%s] %s", tag, name, line)
        if on_line is not None:
            on_line(name, line)

    pending = b""
    while chunk := await stream.read(RELAY_CHUNK):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        if len(pending) >= RELAY_CHUNK:  # an endless line: log it in pieces
            lines.append(pending)
            pending = b""
        for line in lines:
            emit(line)
    if pending:
        emit(pending)


class ProcessGroup:
    """The process group a command leads (its id is the command's pid), signalled so
    that a stranger never is.

    Once the leader is reaped its pid stays taken only while a member of the group
    lives; after that the kernel may give the number to an unrelated process, which may
    lead a group of its own. So the group is signalled through a pidfd taken while the
    leader was ours (Linux 6.9+: it names this group and no later one), and elsewhere by
    ``killpg`` only right after /proc shows a live member, which keeps the number
    taken. What is left is the moment between that look and the signal.
    """

    def __init__(self, pid: int) -> None:
        self.id = pid
        self.leader_reaped = False
        self._pidfd: int | None
        try:
            self._pidfd = os.pidfd_open(pid)
        except OSError:  # already reaped (it was quick), or no pidfd on this kernel
            self._pidfd = None

    def close(self) -> None:
        # Cleared first: a stop still running after this falls back to killpg, and never
        # uses a descriptor number that may have been reused.
        pidfd, self._pidfd = self._pidfd, None
        if pidfd is not None:
            os.close(pidfd)

    def members(self) -> int:
        """How many live (not zombie) processes are in the group, from /proc.

        Once the leader is reaped, a live process with its pid is a stranger that was
        given the free number: the kernel reuses no pid still naming a group, so ours was
        empty then, and nothing joins a group from outside it. It counts as none.
        """
        count = 0
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as stat:
                    # "pid (comm) state ppid pgrp ...": comm may hold spaces and ")".
                    fields = stat.read().rsplit(b")", 1)[1].split()
            except (OSError, IndexError):
                continue  # gone meanwhile
            if fields[0] == b"Z" or int(fields[2]) != self.id:
                continue
            if self.leader_reaped and int(entry.name) == self.id:
                return 0
            count += 1
        return count

    def signal(self, signum: signal.Signals) -> bool:
        """Send ``signum`` to the group; False when it has no member left."""
        if self._pidfd is not None:
            try:
                signal.pidfd_send_signal(self._pidfd, signum, None, PIDFD_SIGNAL_PROCESS_GROUP)
                return True
            except ProcessLookupError:
                return False
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self.close()  # a kernel before 6.9: no group signals through a pidfd
        if not self.members():
            return False
        try:
            os.killpg(self.id, signum)
        except ProcessLookupError:
            return False
        return True


async def stop_group(group: ProcessGroup, tag: str) -> None:
    """SIGTERM the whole process group, wait a grace period, then SIGKILL what is left."""
    for signum in (signal.SIGTERM, signal.SIGKILL):
        if not await asyncio.to_thread(group.members):
            return
        if group.signal(signum):
            log.info("%s: sent %s to process group %d", tag, signum.name, group.id)
        deadline = time.monotonic() + KILL_GRACE_SECONDS
        while time.monotonic() < deadline:
            await asyncio.sleep(GROUP_POLL_SECONDS)
            if not await asyncio.to_thread(group.members):
                return

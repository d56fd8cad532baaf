"""Stopping a trigger command's process group: everything the command left behind goes, and
nothing else does, even once its process id has been handed to somebody else.

A command's process group is named by the command's pid. Once the command has exited and
been reaped, and nothing it started is left, the kernel hands that number out again; a
process that then starts a group of its own (another trigger's command, a job-control shell,
a service) owns the number, and ``killpg`` on it would kill a stranger. pid_max is 32768 on
many machines, so the number comes round again within minutes on a busy one. The tests
below choose the next pid through ``/proc/sys/kernel/ns_last_pid`` (root only) instead of
waiting for it to come round.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import wait_until
from s3pull.command import ProcessGroup, stop_group

NS_LAST_PID = Path("/proc/sys/kernel/ns_last_pid")
LONG_SLEEP = [sys.executable, "-c", "import time; time.sleep(120)"]


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie awaiting its reaper counts as stopped.
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"


def new_group_with_pid(pid: int) -> subprocess.Popen[bytes] | None:
    """Start a process that leads a new session and process group under ``pid``, the way
    any process started after ``pid`` was freed may get it; None if other processes on the
    machine kept taking the number first."""
    for _ in range(50):
        NS_LAST_PID.write_text(str(pid - 1))
        process = subprocess.Popen(LONG_SLEEP, start_new_session=True)
        if process.pid == pid:
            return process
        process.kill()
        process.wait()
    return None


@pytest.mark.parametrize("through", ["pidfd", "killpg"])
def test_stopping_a_command_never_kills_a_group_that_took_its_id_after_it_exited(
    through: str,
) -> None:
    if not os.access(NS_LAST_PID, os.W_OK):
        pytest.skip("choosing the next pid needs root (/proc/sys/kernel/ns_last_pid)")

    async def command_exited_then_stranger() -> tuple[ProcessGroup, subprocess.Popen[bytes] | None]:
        # Exits at SIGTERM, leaving nothing behind: once reaped, its pid is free.
        command = await asyncio.create_subprocess_exec(*LONG_SLEEP, start_new_session=True)
        group = ProcessGroup(command.pid)
        if through == "killpg":
            group.close()  # as on a kernel before 6.9, where no pidfd names a group
        command.terminate()
        await command.wait()
        group.leader_reaped = True
        # Between the reap and whatever the agent does next, a process elsewhere starts
        # a process group and is given the freed number.
        return group, new_group_with_pid(command.pid)

    async def stop(group: ProcessGroup) -> None:
        await stop_group(group, "test")

    # Other processes (parallel test workers) may take the freed number first: then the
    # whole scene is played again with a new command, never skipped.
    for _ in range(20):
        group, stranger = asyncio.run(command_exited_then_stranger())
        if stranger is not None:
            break
    else:
        pytest.fail(f"other processes kept taking the freed pid, last {group.id}, 20 times")
    try:
        assert stranger.pid == group.id
        asyncio.run(stop(group))
        time.sleep(0.3)  # a SIGKILL, had one been sent, has landed by now
        assert stranger.poll() is None, f"a process group that reused pid {group.id} was killed"
    finally:
        stranger.kill()
        stranger.wait()


def test_stopping_a_command_still_kills_what_it_left_in_its_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "stubborn.pid"
    # The command starts a child that ignores SIGTERM, then waits; at SIGTERM the command
    # dies, the child stays, and only the SIGKILL after the command's exit can stop it.
    stubborn = (
        "import os, signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
        " open(sys.argv[1] + '.tmp', 'w').write(str(os.getpid()));"
        " os.rename(sys.argv[1] + '.tmp', sys.argv[1]); time.sleep(120)"
    )
    script = (
        "import subprocess, sys, time;"
        f" subprocess.Popen([sys.executable, '-c', {stubborn!r}, sys.argv[1]]); time.sleep(120)"
    )

    async def stop_a_command() -> None:
        command = await asyncio.create_subprocess_exec(
            sys.executable, "-c", script, str(pidfile), start_new_session=True
        )
        try:
            await asyncio.to_thread(wait_until, pidfile.exists, 30, "the child to start")
            await stop_group(ProcessGroup(command.pid), "test")
        finally:
            if command.returncode is None:
                command.kill()
                await command.wait()

    asyncio.run(stop_a_command())
    child = int(pidfile.read_text())
    try:
        wait_until(lambda: gone(child), 5, "the child that ignored SIGTERM to be killed")
    finally:
        if not gone(child):
            os.kill(child, signal.SIGKILL)

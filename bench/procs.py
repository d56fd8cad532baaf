"""Run a command and measure it: wall time, CPU seconds and peak RSS from the kernel.

Peak RSS comes from ``wait4``'s rusage, which the kernel keeps for the child itself, so
nothing has to sample the process while it runs (and nothing can miss a short peak). It
has a floor: at exec, Linux folds the memory the child had before exec into that peak, and
a child started by vfork (as subprocess does) had the parent's, so no child's peak reads
below the driver's own peak RSS at that moment (``own_peak_rss_mb``). Measured
2026-12-02: ``/bin/true`` reads 14 MB from a small Python parent, 314 MB from one that
had touched 300 MB, even after freeing it. A peak at that floor is an upper bound.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Measured", "ProcSample", "own_peak_rss_mb", "reap", "run_measured", "sample"]


@dataclass(frozen=True, slots=True)
class Measured:
    returncode: int
    wall_seconds: float
    cpu_seconds: float
    peak_rss_mb: float
    timed_out: bool = False
    # time.time() just before the child was started (0.0: not recorded). Wall-clock time,
    # not perf_counter: it is compared with stamps taken in the server's process.
    started_at: float = 0.0


@dataclass(frozen=True, slots=True)
class ProcSample:
    cpu_seconds: float
    rss_mb: float


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def reap(process: subprocess.Popen[bytes], started: float) -> Measured:
    """Wait for ``process`` with wait4, so its rusage (CPU, peak RSS) comes back too."""
    _pid, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    return Measured(
        returncode=process.returncode,
        wall_seconds=wall,
        cpu_seconds=usage.ru_utime + usage.ru_stime,
        peak_rss_mb=usage.ru_maxrss / 1024,  # Linux reports kilobytes
    )


def run_measured(
    argv: Sequence[str], env: dict[str, str], log: Path, timeout: float = 1800.0
) -> Measured:
    """Run ``argv`` to completion with its output in ``log``; kill it after ``timeout``."""
    with log.open("ab") as output:
        output.write(f"$ {' '.join(argv)}\n".encode())
        output.flush()
        started_at = time.time()
        started = time.perf_counter()
        process = subprocess.Popen(
            list(argv), env=env, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        expired = threading.Event()

        def kill() -> None:
            expired.set()
            process.send_signal(signal.SIGKILL)

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            measured = reap(process, started)
        finally:
            timer.cancel()
    return dataclasses.replace(measured, timed_out=expired.is_set(), started_at=started_at)


def own_peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM): the floor under every child's wait4 peak."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def sample(pid: int) -> ProcSample:
    """CPU seconds so far and current RSS of a running process, from /proc."""
    with open(f"/proc/{pid}/stat") as stat:
        # The command name may hold spaces: fields start after its closing parenthesis.
        fields = stat.read().rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])
    rss_kb = 0
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                rss_kb = int(line.split()[1])
    return ProcSample((utime + stime) / CLOCK_TICKS, rss_kb / 1024)

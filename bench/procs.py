"""Run a command and measure it: wall time, CPU seconds and peak RSS from the kernel.

Peak RSS comes from ``wait4``'s rusage, which the kernel keeps for the child itself, so
nothing has to sample the process while it runs (and nothing can miss a short peak).

That peak has a floor: at exec, Linux folds the memory the child had before exec into it,
and a child started by vfork (as subprocess does) had its parent's, so no child's peak
reads below its parent's own peak RSS. Measured 2026-12-02: ``/bin/true`` reads 14 MB
from a small Python parent and 314 MB from one that had touched 300 MB, even after freeing
it. So ``run_measured`` starts each tool from ``bench/launch.py``, a process of about 8 MB
that waits for it and reports its rusage; ``reap`` (the agent, which the driver signals
and whose log it reads) still has the driver's peak under it (``own_peak_rss_mb``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
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


LAUNCHER = Path(__file__).with_name("launch.py")


def run_measured(
    argv: Sequence[str], env: dict[str, str], log: Path, timeout: float = 1800.0
) -> Measured:
    """Run ``argv`` to completion with its output in ``log``; kill it after ``timeout``.

    Through the launcher (see above); its wall time and start stamp are taken there, just
    around the tool's own exec and exit."""
    with log.open("ab") as output:
        output.write(f"$ {' '.join(argv)}\n".encode())
        output.flush()
        report_read, report_write = os.pipe()
        started = time.perf_counter()
        try:
            launcher = subprocess.Popen(
                [sys.executable, "-S", "-E", str(LAUNCHER), str(report_write), *argv],
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                pass_fds=(report_write,),
                start_new_session=True,  # its own group: a timeout kills the tool too
            )
        finally:
            os.close(report_write)
        expired = threading.Event()

        def kill() -> None:
            expired.set()
            os.killpg(launcher.pid, signal.SIGKILL)

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            launcher.wait()
            # One small write before the launcher exits: whole, or nothing at all.
            report = os.read(report_read, 65536)
        finally:
            timer.cancel()
            os.close(report_read)
    if not report:
        # Killed, or the tool could not be started (the launcher's traceback is in the log).
        code = launcher.returncode if launcher.returncode else 127
        wall = time.perf_counter() - started
        return Measured(code, wall, 0.0, 0.0, timed_out=expired.is_set())
    return Measured(**json.loads(report), timed_out=expired.is_set())


def own_peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM): the floor under the peak of a child it starts."""
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

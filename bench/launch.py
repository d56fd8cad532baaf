"""``python -S -E bench/launch.py FD ARGV...``: run ARGV, wait for it, and write what
the kernel says of it (exit status, CPU seconds, peak RSS) as JSON to file descriptor FD.

Why a launcher: a child's peak RSS from ``wait4`` includes the memory it had before its
exec, and a child the driver starts had the driver's (see ``bench.procs``). Started from
this small process (about 8 MB, no imports beyond the standard library's core), a tool's
peak is its own. The stamps are taken here, just before the tool's exec.

Standard library only, no ``bench`` imports: it runs with ``-S``, before any site setup.
"""

from __future__ import annotations

import json
import os
import sys
import time


def main() -> int:
    fd, argv = int(sys.argv[1]), sys.argv[2:]
    started_at = time.time()
    started = time.perf_counter()
    pid = os.posix_spawnp(argv[0], argv, os.environ)
    _pid, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - started
    report = {
        "returncode": os.waitstatus_to_exitcode(status),
        "wall_seconds": wall,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "peak_rss_mb": usage.ru_maxrss / 1024,  # Linux reports kilobytes
        "started_at": started_at,
    }
    os.write(fd, json.dumps(report).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())

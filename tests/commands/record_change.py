"""A stand-in on_change hook.

argv: OUTPUT_JSONL [exit CODE | hold RELEASE_FILE]
Appends one JSON line (its stdin, cwd, S3PULL_* variables, whether AWS credentials
reached it) to OUTPUT_JSONL, then behaves as asked: exits with CODE, or, on its first
run only, waits until RELEASE_FILE exists (so a test can make changes while it runs).
"""

import json
import os
import sys
import time
from pathlib import Path

output, *behaviour = sys.argv[1:]
stdin = sys.stdin.buffer.read().decode("utf-8", "surrogateescape")
out = Path(output)
first = not out.exists()
with out.open("a") as record:
    record.write(
        json.dumps(
            {
                "stdin": stdin,
                "cwd": os.getcwd(),
                "env": {k: v for k, v in os.environ.items() if k.startswith("S3PULL_")},
                "aws": sorted(k for k in os.environ if k.startswith("AWS_")),
            }
        )
        + "\n"
    )
print(f"on_change saw {len(stdin.splitlines())} path(s)")
if behaviour[:1] == ["exit"]:
    sys.exit(int(behaviour[1]))
if behaviour[:1] == ["hold"] and first:
    release = Path(behaviour[1])
    while not release.exists():
        time.sleep(0.05)

"""A stand-in business process for trigger tests.

argv: OUTPUT_JSONL [exit CODE | sleep SECONDS | spawn PIDFILE | leave PIDFILE
                   | overlap DIR SECONDS]
Appends one JSON line describing what it saw (cwd, S3PULL_* variables, its whole
environment, files) to OUTPUT_JSONL, prints to stdout and stderr, then behaves as asked.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

output, *behaviour = sys.argv[1:]
files = sorted(
    os.path.relpath(os.path.join(directory, name), ".")
    for directory, _dirs, names in os.walk(".")
    for name in names
)
running = None
if behaviour[:1] == ["overlap"]:
    # Say "I am running" in DIR and count who else is, before anything else happens.
    running = Path(behaviour[1]) / str(os.getpid())
    running.parent.mkdir(exist_ok=True)
    running.touch()
record = {
    "cwd": os.getcwd(),
    "env": {k: v for k, v in os.environ.items() if k.startswith("S3PULL_")},
    "environ": dict(os.environ),
    "running": len(os.listdir(running.parent)) if running else None,
    "files": files,
    "contents": {name: Path(name).read_bytes().decode(errors="replace") for name in files},
}
with open(output, "a") as out:
    out.write(json.dumps(record) + "\n")
print(f"processed {len(files)} file(s)", flush=True)
print("a line on stderr", file=sys.stderr, flush=True)

if behaviour[:1] == ["exit"]:
    sys.exit(int(behaviour[1]))
if behaviour[:1] == ["sleep"]:
    time.sleep(float(behaviour[1]))
if behaviour[:1] == ["overlap"]:
    time.sleep(float(behaviour[2]))
    assert running is not None
    running.unlink()
if behaviour[:1] == ["leave"]:
    # A child left behind in the process group by a command that exits 0 at once.
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    with open(behaviour[1], "w") as pidfile:
        pidfile.write(str(child.pid))
if behaviour[:1] == ["spawn"]:
    # A grandchild in the same process group, ignoring nothing: the timeout must kill it.
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    with open(behaviour[1], "w") as pidfile:
        pidfile.write(str(child.pid))
    time.sleep(600)

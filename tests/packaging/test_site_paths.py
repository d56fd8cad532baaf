"""`s3pull-setup site-paths` writes configured directories into a systemd drop-in (issue 12,
item 7): a control character is a configuration error before anything is written, and
every other character is escaped so that systemd reads back exactly the directory.

systemd is the judge: `systemd-analyze verify` loads the shipped unit with the drop-in
the script writes (it reads `<unit>.d/` beside the unit file)."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_packaging import PACKAGING, load_setup_module

from conftest import run_s3pull
from s3pull.config import load_config

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed (.ci/run installs it)"
)

# Legal in a directory name, and each means something to systemd's unit file syntax:
# whitespace splits ReadWritePaths=, quotes and backslashes quote, "%" starts a specifier,
# "-" and "+" are prefixes, "#" and ";" start comments, "=" and "[" make keys and sections.
ODD_NAMES = [
    "with space",
    "two  spaces ",
    'double"quote',
    "single'quote",
    "back\\slash",
    "trailing-backslash\\",
    "literal-\\n-not-a-newline",
    "100%",
    "%h%n%%",
    "$HOME ${X} `id`",
    "-dash",
    "+plus",
    "#hash;semi",
    "ExecStartPre=+",
    "[Service]",
    "é ü 日本",
]

INJECTION = "/srv/a\nExecStartPre=+/bin/sh -c 'touch /pwned'\nReadWritePaths=-/srv/b"


def toml_string(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def write_config(tmp_path: Path, directories: list[str]) -> Path:
    lines = [
        "[queue]",
        'url = "https://sqs.eu-west-1.amazonaws.com/123456789012/s3pull-web"',
        "[agent]",
        f"state_directory = {toml_string(str(tmp_path / 'state dir'))}",
    ]
    for i, directory in enumerate(directories):
        lines += [
            "[[mirror]]",
            f'name = "m{i}"',
            'bucket = "acme-shared"',
            f"directory = {toml_string(directory)}",
        ]
    path = tmp_path / "s3pull.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_newline_in_a_directory_is_refused_before_anything_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, ["/srv/assets", INJECTION])
    setup = load_setup_module()
    drop_in = tmp_path / "s3pull.service.d" / "50-site-paths.conf"
    monkeypatch.setattr(setup, "CONFIG", config)
    monkeypatch.setattr(setup, "DROP_IN", drop_in)

    for argv in (["site-paths"], ["check-config", str(config)]):
        assert setup.main(argv) == 78
        err = capsys.readouterr().err
        assert err.count("\n") == 1  # one line: the value is shown escaped
        assert f"{config}: mirror[1].directory: must not contain control characters" in err
        assert "a newline (U+000A)" in err
    assert not drop_in.exists()
    assert not drop_in.parent.exists()

    # The agent refuses it alike, whatever the verb.
    for verb in ("check", "sync", "run"):
        result = run_s3pull(verb, "--config", str(config))
        assert result.returncode == 78, (verb, result.stderr)
        assert "mirror[1].directory: must not contain control characters" in result.stderr


def test_drop_in_refuses_a_control_character_the_parser_did_not_see(tmp_path: Path) -> None:
    # Defence in depth: a Config built some other way still cannot inject a line.
    setup = load_setup_module()
    config = load_config(write_config(tmp_path, ["/srv/assets"]), {})
    for bad in (INJECTION, "/srv/a\rb", "/srv/a\0b", "/srv/a\x85b", "relative/dir"):
        mirror = dataclasses.replace(config.mirrors[0], directory=Path(bad))
        with pytest.raises(setup.ConfigError, match="unit file"):
            setup.drop_in_text(dataclasses.replace(config, mirrors=(mirror,)))


def unit_directory(tmp_path: Path, drop_in: str) -> Path:
    """The shipped unit and `drop_in` laid out as systemd-analyze verify reads them."""
    units = tmp_path / "units"
    (units / "s3pull.service.d").mkdir(parents=True)
    unit = (PACKAGING / "systemd" / "s3pull.service").read_text()
    # verify checks that the program exists: the package's /usr/bin/s3pull is not here.
    assert "\nExecStart=/usr/bin/s3pull run\n" in unit
    unit = unit.replace("ExecStart=/usr/bin/s3pull run", f"ExecStart={sys.executable} -V")
    (units / "s3pull.service").write_text(unit)
    (units / "s3pull.service.d" / "50-site-paths.conf").write_text(drop_in)
    return units


def verify(units: Path) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE is not None
    return subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", "s3pull.service"],
        cwd=units,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "SYSTEMD_LOG_COLOR": "0"},
    )


@needs_systemd_analyze
def test_the_drop_in_with_odd_directories_is_what_systemd_accepts(tmp_path: Path) -> None:
    directories = [str(tmp_path / "srv" / name) for name in ODD_NAMES]
    setup = load_setup_module()
    config = load_config(write_config(tmp_path, directories), {})
    text = setup.drop_in_text(config)
    # One ReadWritePaths= line per directory and nothing else: no line of its own.
    settings = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert settings[0] == "[Service]"
    assert len(settings) == 1 + len(directories) + 1  # and the state directory
    assert all(line.startswith('ReadWritePaths="-/') for line in settings[1:])

    # verify prints a warning for any setting it cannot use ("fail CI on any output").
    result = verify(unit_directory(tmp_path, text))
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


@needs_systemd_analyze
def test_systemd_reads_back_exactly_the_configured_directory(tmp_path: Path) -> None:
    # systemd-analyze cannot show a setting's parsed value without a running manager, but
    # it names the parsed path of a ReadWritePaths= entry it ignores for ending in "/..".
    # So each directory is quoted with "/.." added, and systemd's reading of it must be
    # exactly that text: the same quoting, read back by systemd itself.
    setup = load_setup_module()
    directories = [f"{tmp_path}/srv/{name}/.." for name in ODD_NAMES]
    text = "[Service]\n" + "".join(
        f"ReadWritePaths={setup.unit_quote(Path(d))}\n" for d in directories
    )
    result = verify(unit_directory(tmp_path, text))
    read_back = re.findall(r"ReadWritePaths= path is not normalized, ignoring: (.*)", result.stderr)
    assert read_back == directories, result.stderr


def test_site_paths_says_how_to_add_the_service_user_to_a_mirrors_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A group is a grant of rights, and the configuration may come from Parameter Store:
    # site-paths names the command but never runs it (issue 15, item 2).
    path = write_config(tmp_path, [str(tmp_path / "web"), str(tmp_path / "mine")])
    text = path.read_text().replace('name = "m0"', 'name = "m0"\ngroup = "daemon"')
    path.write_text(text.replace('name = "m1"', 'name = "m1"\ngroup = "nogroup"'))
    setup = load_setup_module()
    monkeypatch.setattr(setup, "USER", "nobody")  # the packaged user's stand-in: in nogroup
    monkeypatch.setattr(setup, "CONFIG", path)
    monkeypatch.setattr(setup, "DROP_IN", tmp_path / "s3pull.service.d" / "50-site-paths.conf")
    monkeypatch.setattr(setup, "systemd_running", lambda: False)
    assert setup.main(["site-paths"]) == 0
    err = capsys.readouterr().err
    assert (
        "s3pull: warning: user nobody is not a member of group daemon, which a mirror gives"
        " its files; as root: usermod -a -G daemon nobody && systemctl restart s3pull.service"
    ) in err
    assert "group nogroup" not in err  # its primary group
    assert "nobody" not in Path("/etc/group").read_text().split("daemon:", 1)[1].split("\n")[0]

"""Configuration chores for the packaged agent, run by ``s3pull-setup`` with the agent's own
interpreter so that the agent's parser decides what is valid.

check-config   validate a file, no AWS calls (exit 78 when invalid, like the agent)
site-paths     the service's sandbox is read-only but for its state directory: write the
               drop-in that opens each mirror and trigger directory, create the missing ones
apply-config   install the configuration from SSM Parameter Store when it is valid and new,
               then restart (or reload) the service: what the SSM Command document runs
"""

from __future__ import annotations

import argparse
import grp
import os
import pwd
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from s3pull.config import Config, load_config, parse_config
from s3pull.errors import ConfigError

CONFIG = Path("/etc/s3pull/s3pull.toml")
DEFAULT_STATE = Path("/var/lib/s3pull")  # StateDirectory= in the unit already covers it
DROP_IN = Path("/etc/systemd/system/s3pull.service.d/50-site-paths.conf")
SERVICE = "s3pull.service"
USER = "s3pull"
EXIT_CONFIG = 78


def writable_paths(config: Config) -> list[Path]:
    paths = [m.directory for m in config.mirrors] + [t.directory for t in config.triggers]
    if config.agent.state_directory != DEFAULT_STATE:
        paths.append(config.agent.state_directory)
    return list(dict.fromkeys(paths))  # in file order, once each


# C0, DEL and C1. systemd ends a line at "\n", "\r" and NUL, and no quoting in a unit file
# can carry one: a newline in a directory would start a line of its own, such as
# "ExecStartPre=+..." run as root outside the sandbox (issue 12). The agent's parser
# refuses them in every configuration string; this is the last line of defence.
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def unit_quote(path: Path) -> str:
    """``path`` as one word of ReadWritePaths= that systemd reads back as exactly ``path``.

    systemd unquotes the word first (a backslash takes the next character literally), then
    takes the "-" prefix (a missing path is ignored instead of failing the unit with
    226/NAMESPACE), then expands %-specifiers. So: double quotes around it, so whitespace,
    "#", ";" and "'" are plain characters; a backslash before each backslash and double
    quote; "%%" for "%". The path is absolute, so it starts with "/" and a "-" or "+" of
    its own can never be read as a prefix. Raises ValueError for what cannot be written.
    """
    text = str(path)
    if match := CONTROL.search(text):
        raise ValueError(f"{text!r} holds a control character (U+{ord(match.group()):04X})")
    if not path.is_absolute():
        raise ValueError(f"{text!r} is not an absolute path")
    text = text.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    return f'"-{text}"'


def drop_in_text(config: Config) -> str:
    source = str(config.path)
    if CONTROL.search(source):  # even in a comment: a newline would end it
        source = repr(source)
    lines = [
        f"# Written by s3pull-setup site-paths from {source}; rewritten whenever the",
        "# configuration changes. Put settings of your own in another file of this directory.",
        "[Service]",
    ]
    for path in writable_paths(config):
        try:
            lines.append(f"ReadWritePaths={unit_quote(path)}")
        except ValueError as exc:
            raise ConfigError(str(config.path), "", f"cannot go into a unit file: {exc}") from None
    return "\n".join(lines) + "\n"


def write_if_changed(path: Path, text: str, mode: int = 0o644) -> bool:
    """Atomically replace ``path`` with ``text`` unless it already holds exactly that."""
    try:
        if path.read_text(encoding="utf-8") == text:
            return False
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fchmod(out.fileno(), mode)
            os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return True


def create_directories(config: Config) -> None:
    """Create missing directories for s3pull; leave existing ones (and their owner) alone,
    but say so when s3pull cannot write one: the agent would fail there later."""
    user = pwd.getpwnam(USER)
    for path in writable_paths(config):
        if not path.is_dir():
            path.mkdir(mode=0o755, parents=True, exist_ok=True)
            os.chown(path, user.pw_uid, user.pw_gid)
            print(f"s3pull: created {path} for user {USER}")
            continue
        st = path.stat()
        if not (
            st.st_uid == user.pw_uid
            or (st.st_gid == user.pw_gid and st.st_mode & 0o020)
            or st.st_mode & 0o002
        ):
            print(f"s3pull: warning: user {USER} cannot write {path}", file=sys.stderr)


def missing_groups(config: Config) -> list[str]:
    """The mirrors' groups the service user is not a member of (it could not give files
    that group: chown(2) without CAP_CHOWN takes membership)."""
    user = pwd.getpwnam(USER)
    missing = []
    for group in dict.fromkeys(m.group for m in config.mirrors if m.group):
        try:
            entry = grp.getgrnam(group)
        except KeyError:
            continue  # the configuration check already refused it
        if entry.gr_gid != user.pw_gid and USER not in entry.gr_mem:
            missing.append(group)
    return missing


def warn_missing_groups(config: Config) -> None:
    """Say how to add the service user to a mirror's group, but never do it here.

    Joining a group is a grant of rights, and the configuration may come from SSM
    Parameter Store (apply-config): whoever may write that parameter must not be able to
    put the agent, and every trigger command it runs, in `disk`, `shadow` or `sudo`.
    So an administrator runs the one command, having read which group it is.
    """
    for group in missing_groups(config):
        print(
            f"s3pull: warning: user {USER} is not a member of group {group}, which a mirror"
            f" gives its files; as root: usermod -a -G {group} {USER} && systemctl restart"
            f" {SERVICE}",
            file=sys.stderr,
        )


def systemd_running() -> bool:
    return Path("/run/systemd/system").is_dir()


def systemctl(*args: str) -> None:
    subprocess.run(["systemctl", *args], check=True)


def site_paths(config: Config) -> bool:
    """Write the drop-in and create the directories; True when the drop-in changed."""
    create_directories(config)
    warn_missing_groups(config)
    changed = write_if_changed(DROP_IN, drop_in_text(config))
    print(f"s3pull: {'wrote' if changed else 'unchanged:'} {DROP_IN}")
    if changed and systemd_running():
        systemctl("daemon-reload")
    return changed


def fetch_parameter(name: str) -> str:
    import boto3
    from botocore.utils import InstanceMetadataRegionFetcher

    # Run Command gives scripts no region; an instance knows its own from IMDS.
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if not region:
        region = InstanceMetadataRegionFetcher().retrieve_region()
    ssm = boto3.client("ssm", region_name=region)
    value = ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"]
    return str(value)


def apply_config(parameter: str, action: str) -> int:
    text = fetch_parameter(parameter)
    if not text.endswith("\n"):
        text += "\n"
    # Validate before installing: a bad parameter never replaces a working file. Errors
    # name the parameter, since that is where the mistake has to be fixed.
    parse_config(text, Path(f"ssm:{parameter}"))
    if not write_if_changed(CONFIG, text):
        print(f"s3pull: {CONFIG} already matches {parameter}; nothing to do")
        return 0
    print(f"s3pull: installed {CONFIG} from {parameter}")
    config = load_config(CONFIG)
    paths_changed = site_paths(config)
    if not systemd_running():
        return 0
    # New ReadWritePaths= only apply to a new process: that takes a restart.
    if action == "restart" or paths_changed:
        systemctl("restart", SERVICE)
    else:
        systemctl("reload-or-restart", SERVICE)
    systemctl("is-active", "--quiet", SERVICE)
    print(f"s3pull: {SERVICE} is active")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="s3pull-setup")
    verbs = parser.add_subparsers(dest="verb", required=True)
    check = verbs.add_parser("check-config")
    check.add_argument("file", nargs="?", type=Path, default=CONFIG)
    verbs.add_parser("site-paths")
    apply = verbs.add_parser("apply-config")
    apply.add_argument("parameter")
    apply.add_argument("action", nargs="?", choices=["restart", "reload"], default="restart")
    args = parser.parse_args(argv)
    try:
        if args.verb == "check-config":
            load_config(args.file)
            print(f"s3pull: configuration OK: {args.file}")
            return 0
        if args.verb == "site-paths":
            site_paths(load_config(CONFIG))
            return 0
        return apply_config(args.parameter, args.action)
    except ConfigError as exc:
        print(f"s3pull: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except subprocess.CalledProcessError as exc:
        print(f"s3pull: {' '.join(exc.cmd)} failed with status {exc.returncode}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

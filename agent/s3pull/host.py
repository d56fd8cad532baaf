"""``s3pull check``, this server's side: what the agent needs of the machine it runs on.

Checked as the user running ``check``: run it as the service user (``sudo -u s3pull``) to
learn what the service will find. Changes nothing on disk.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
from pathlib import Path
from typing import Final

from s3pull.config import Config

__all__ = ["SERVICE_USER", "host_problems", "writable_problem"]

SERVICE_USER: Final = "s3pull"  # the packaged service's User= (packaging/systemd)


def host_problems(config: Config) -> list[str]:
    """Each thing on this server that would stop the agent, in words an operator can act
    on; empty when all is well."""
    problems: list[str] = []
    state = config.agent.state_directory
    if (problem := writable_problem(state)) is not None:
        problems.append(f"state directory {state} (agent.state_directory): {problem}")
    for mirror in config.mirrors:
        if (problem := writable_problem(mirror.directory)) is not None:
            problems.append(f"mirror {mirror.name}: {mirror.directory}: {problem}")
        if mirror.group and (problem := _group_problem(mirror.group)) is not None:
            problems.append(f"mirror {mirror.name}: group {mirror.group}: {problem}")
        if mirror.on_change and (problem := _runnable(mirror.on_change[0])) is not None:
            problems.append(f"mirror {mirror.name}: on_change {mirror.on_change[0]}: {problem}")
    for trigger in config.triggers:
        if (problem := writable_problem(trigger.directory)) is not None:
            problems.append(f"trigger {trigger.name}: {trigger.directory}: {problem}")
        if (problem := _runnable(trigger.command[0])) is not None:
            problems.append(f"trigger {trigger.name}: command {trigger.command[0]}: {problem}")
    return problems


def writable_problem(directory: Path) -> str | None:
    """A directory the agent can write in, or create (its nearest existing parent is
    writable)."""
    existing = directory
    while not (found := _exists(existing)):
        if found is None:
            return _unreachable()
        if existing.parent == existing:
            return "no part of the path exists"
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "is not writable" if existing == directory else f"cannot be created in {existing}"
        return f"{what} by {_user()}"
    return None


def _exists(path: Path) -> bool | None:
    """Whether ``path`` exists; None when a directory on the way may not be searched
    (Path.exists raises then: `sudo -u s3pull s3pull check` below a 0700 parent)."""
    try:
        path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return False
    except PermissionError:
        return None
    return True


def _unreachable() -> str:
    return f"cannot be reached by {_user()}: a directory on its path may not be searched"


def _group_problem(group: str) -> str | None:
    """Can the agent give files ``group``? Without CAP_CHOWN, only a member of the group
    may (chown(2)). As root, which always may, the packaged service user is asked about
    instead, since that is who the service runs as."""
    try:
        entry = grp.getgrnam(group)
    except KeyError:
        return "no such group on this system"
    if os.geteuid() != 0:
        if entry.gr_gid == os.getegid() or entry.gr_gid in os.getgroups():
            return None
        user = _user()
    else:
        try:
            service = pwd.getpwnam(SERVICE_USER)
        except KeyError:
            return None  # not the packaged service: root itself may chown
        if service.pw_gid == entry.gr_gid or SERVICE_USER in entry.gr_mem:
            return None
        user = SERVICE_USER
    return (
        f"{user} is not a member, so it cannot give files this group; add it with"
        f" `usermod -a -G {group} {user}`, then restart the service"
    )


def _runnable(program: str) -> str | None:
    """Found and executable, as the agent would run it (no shell, the clean PATH)."""
    if "/" in program:
        path = Path(program)
        if not (found := _exists(path)):
            return "does not exist" if found is False else _unreachable()
        if path.is_dir() or not os.access(path, os.X_OK):
            return f"is not executable by {_user()}"
        return None
    if shutil.which(program) is None:
        return f"not found on PATH ({os.environ.get('PATH', '')})"
    return None


def _user() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError):
        return f"uid {os.geteuid()}"

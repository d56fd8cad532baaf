"""Walk a mirror directory: every regular file below it, never through a symlink.

What a reconcile compares with a listing (``walk_files``) and what start-up clears
(``remove_leftover_temp_files``). Like ``paths``, each directory is opened from its
parent's descriptor with ``DIR_FLAGS`` (``O_NOFOLLOW``): nothing outside the directory
is ever listed or removed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from s3pull.paths import DIR_FLAGS, TEMP_PREFIX

__all__ = ["remove_leftover_temp_files", "walk_files"]


def _regular_files(root: Path) -> Iterator[tuple[str, int, os.DirEntry[str]]]:
    """Yield ``(relative posix path, parent directory fd, entry)`` for every regular file
    below ``root``, temporary files included.

    Each directory is opened from its parent's file descriptor with ``O_NOFOLLOW``: one
    swapped for a symlink (or a file) while we walk is skipped, never followed, so nothing
    outside ``root`` is ever listed. A directory that cannot be read is skipped too. Only
    the directories from ``root`` down to the current one are held open.
    """
    try:
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return
    stack: list[tuple[str, int, Iterator[os.DirEntry[str]]]] = []
    try:
        stack.append(("", root_fd, iter(_list_directory(root_fd))))
        while stack:
            relative_dir, fd, entries = stack[-1]
            entry = next(entries, None)
            if entry is None:
                stack.pop()
                os.close(fd)
                continue
            relative = f"{relative_dir}{entry.name}"
            if entry.is_dir(follow_symlinks=False):
                try:
                    child = os.open(entry.name, DIR_FLAGS, dir_fd=fd)
                except OSError:  # gone, or swapped for a symlink or a file since the listing
                    continue
                stack.append((f"{relative}/", child, iter(_list_directory(child))))
            elif entry.is_file(follow_symlinks=False):
                yield relative, fd, entry
    finally:
        for _relative, fd, _entries in stack:
            os.close(fd)


def _list_directory(fd: int) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(fd) as entries:
            return list(entries)
    except OSError:
        return []  # unreadable, or removed while we walk: nothing to report below it


def walk_files(root: Path) -> Iterator[tuple[str, os.stat_result]]:
    """Yield ``(relative posix path, stat)`` for every regular file below ``root``.

    Symlinks are neither followed nor reported; our temporary files are skipped. Names
    are what the file system holds: one that is not UTF-8 comes surrogate-escaped (see
    ``is_utf8`` and ``shown_name``).
    """
    for relative, _fd, entry in _regular_files(root):
        if entry.name.startswith(TEMP_PREFIX):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        yield relative, st


def remove_leftover_temp_files(root: Path) -> int:
    """Delete temporary files a crash left behind below ``root``; return how many."""
    removed = 0
    for _relative, fd, entry in _regular_files(root):
        if entry.name.startswith(TEMP_PREFIX):
            try:
                os.unlink(entry.name, dir_fd=fd)
                removed += 1
            except FileNotFoundError:
                pass
    return removed

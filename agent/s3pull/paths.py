"""The two safety primitives: where a key may land, and how a file gets there.

Every path below a configured directory is reached by walking directory file descriptors
one component at a time with ``O_NOFOLLOW``, so a symlink planted anywhere inside the
directory (even between our check and our write) can never redirect a write or a delete
outside it. The configured directory itself may be a symlink: that is the operator's
choice, not input.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from s3pull.errors import PathCollision, UnsafeKey

__all__ = [
    "DEFAULT_ATTRIBUTES",
    "DIR_FLAGS",
    "TEMP_PREFIX",
    "AtomicWriter",
    "Attributes",
    "ensure_directory",
    "is_folder_placeholder",
    "is_utf8",
    "local_stat",
    "named",
    "remove_file",
    "repair_attributes",
    "repair_directory_attributes",
    "safe_parts",
    "shown_name",
]

# Temporary files live next to their target so the final rename is atomic. Keys whose
# base name starts with this prefix are refused, so cleaning up after a crash can never
# delete a real object's file.
TEMP_PREFIX = ".s3pull-tmp-"
NAME_MAX = 255  # bytes per path component on Linux file systems
PATH_MAX = 4096  # bytes for a whole path

# Open a directory below the root: never through a symlink.
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True, slots=True)
class Attributes:
    """Mode and group of what a mirror writes: files, and directories it creates.

    Always set through a descriptor (fchmod/fchown), never by path: a name can be
    swapped for a symlink between a check and a chmod, a descriptor cannot.
    """

    file_mode: int = 0o644
    dir_mode: int = 0o755
    gid: int | None = None  # None: whatever group the agent creates them with
    # Whether a mode or group found different is put back: only when the operator set
    # file_mode, dir_mode or group. Otherwise an upgrade would widen modes an operator
    # had tightened by hand (0640 -> 0644) and undo every later chmod.
    repair: bool = False

    def differ(self, st: os.stat_result, directory: bool = False) -> str | None:
        """What is wrong with ``st`` (mode, group) in words; None when it is right or
        not ours to repair."""
        if not self.repair:
            return None
        wanted = self.dir_mode if directory else self.file_mode
        wrong = []
        if stat.S_IMODE(st.st_mode) != wanted:
            wrong.append(f"mode {stat.S_IMODE(st.st_mode):04o}, not {wanted:04o}")
        if self.gid is not None and st.st_gid != self.gid:
            wrong.append(f"group {st.st_gid}, not {self.gid}")
        return ", ".join(wrong) or None

    def apply(self, fd: int, directory: bool = False) -> None:
        """Give the file or directory open at ``fd`` its mode and group. The group first:
        chown may clear set-id bits, and a mode is only right once the group is."""
        if self.gid is not None:
            os.fchown(fd, -1, self.gid)
        # fchmod, unlike open() and mkdir(), ignores the umask: the mode is exactly this.
        os.fchmod(fd, self.dir_mode if directory else self.file_mode)


DEFAULT_ATTRIBUTES = Attributes()


def is_folder_placeholder(key: str) -> bool:
    """A key ending in ``/`` is a console-created "folder", not a file."""
    return key.endswith("/")


def safe_parts(key: str, prefix: str, root: Path) -> tuple[str, ...]:
    """Split ``key[len(prefix):]`` into path components, refusing anything unsafe.

    Only the shape of the key is checked here; symlinks and file/directory collisions
    are found while walking the real directory (see ``_walk``).
    """
    if not key.startswith(prefix):
        raise UnsafeKey(key, f"not under prefix {prefix!r}")
    relative = key[len(prefix) :]
    if "\x00" in relative:
        raise UnsafeKey(key, "contains a NUL byte")
    if not relative:
        raise UnsafeKey(key, "names the directory itself")
    if relative.startswith("/"):
        raise UnsafeKey(key, "is an absolute path")
    try:
        relative.encode()
    except UnicodeEncodeError:
        raise UnsafeKey(key, "is not valid UTF-8") from None
    parts = tuple(relative.split("/"))
    for part in parts:
        if part in ("", ".", ".."):
            raise UnsafeKey(key, f"has a {part or 'empty'!r} path component")
        if len(os.fsencode(part)) > NAME_MAX:
            raise UnsafeKey(key, f"has a path component longer than {NAME_MAX} bytes")
    if parts[-1].startswith(TEMP_PREFIX):
        raise UnsafeKey(key, f"uses the reserved name prefix {TEMP_PREFIX!r}")
    if len(os.fsencode(str(root.joinpath(*parts)))) >= PATH_MAX:
        raise UnsafeKey(key, f"would make a path longer than {PATH_MAX} bytes")
    return parts


def named(exc: OSError, path: Path | str) -> OSError:
    """``exc``, naming the whole ``path``. A call relative to a directory descriptor
    names only its last component (``'img'``, ``'.s3pull-tmp-...'``), which tells an
    operator nothing; the subclass (PermissionError, ...) follows the errno."""
    if exc.filename is not None and os.path.isabs(os.fsdecode(exc.filename)):
        return exc
    return OSError(exc.errno, exc.strerror, os.fspath(path))


@contextmanager
def _naming(path: Path | str) -> Iterator[None]:
    """Raise OSErrors from the block naming ``path`` (see ``named``)."""
    try:
        yield
    except OSError as exc:
        raise named(exc, path) from None


def _open_child_dir(
    parent_fd: int,
    name: str,
    key: str,
    create: bool,
    here: tuple[str, ...],
    path: Path,
    attributes: Attributes = DEFAULT_ATTRIBUTES,
) -> int | None:
    """Open directory ``name`` (at ``here`` below the root, ``path`` in full) below
    ``parent_fd`` without following symlinks. Returns None when it does not exist and
    ``create`` is false. A directory made here gets ``attributes`` (dir_mode, group).
    """
    made = False
    for _ in range(2):  # a second pass covers a concurrent mkdir of the same directory
        try:
            fd = os.open(name, DIR_FLAGS, dir_fd=parent_fd)
        except FileNotFoundError:
            if not create:
                return None
            try:
                # Owner-only until its mode and group are set: nobody else may look in
                # before the group it is meant for is in place.
                with _naming(path):
                    os.mkdir(name, 0o700, dir_fd=parent_fd)
                made = True
            except FileExistsError:
                pass
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise _not_a_directory(parent_fd, name, key, here) from None
            raise named(exc, path) from None
        else:
            if made:
                try:
                    with _naming(path):
                        attributes.apply(fd, directory=True)
                except BaseException:
                    os.close(fd)
                    raise
            return fd
    with _naming(path):
        return os.open(name, DIR_FLAGS, dir_fd=parent_fd)


def _not_a_directory(parent_fd: int, name: str, key: str, here: tuple[str, ...]) -> UnsafeKey:
    try:
        mode = os.stat(name, dir_fd=parent_fd, follow_symlinks=False).st_mode
    except OSError:
        return UnsafeKey(key, f"path component {name!r} is not a directory")
    if stat.S_ISLNK(mode):
        return UnsafeKey(key, f"path component {name!r} is a symlink")
    return PathCollision(
        key,
        f"path component {name!r} is a file, so it cannot also be a directory",
        blocker=here,
        is_directory=False,
    )


class _Walk:
    """File descriptors of every directory from the root down to a key's parent."""

    def __init__(
        self,
        root: Path,
        parts: tuple[str, ...],
        key: str,
        create: bool,
        attributes: Attributes = DEFAULT_ATTRIBUTES,
    ) -> None:
        self._stack = ExitStack()
        self.fds: list[int] = []
        self.complete = False
        try:
            try:
                self._push(os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
            except FileNotFoundError:
                if create:
                    raise
                return  # no directory yet, so no file either
            for depth, name in enumerate(parts[:-1], start=1):
                here = parts[:depth]
                fd = _open_child_dir(
                    self.fds[-1], name, key, create, here, root.joinpath(*here), attributes
                )
                if fd is None:
                    return
                self._push(fd)
            self.complete = True
        except BaseException:
            self._stack.close()
            raise

    def _push(self, fd: int) -> None:
        self._stack.callback(os.close, fd)
        self.fds.append(fd)

    @property
    def parent_fd(self) -> int:
        return self.fds[-1]

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> _Walk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _final_stat(parent_fd: int, parts: tuple[str, ...], key: str) -> os.stat_result | None:
    """lstat the final component; refuse symlinks and directories in the way."""
    name = parts[-1]
    try:
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeKey(key, f"{name!r} is a symlink")
    if stat.S_ISDIR(st.st_mode):
        raise PathCollision(
            key,
            f"{name!r} is a directory (other keys live below it)",
            blocker=parts,
            is_directory=True,
        )
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeKey(key, f"{name!r} is not a regular file")
    return st


def _remove_empty_dir(parent_fd: int, name: str) -> bool:
    """Remove directory ``name`` if it holds nothing but empty directories."""
    try:
        fd = os.open(name, DIR_FLAGS, dir_fd=parent_fd)
    except OSError:
        return False  # not a directory, or a symlink: never touched
    try:
        for child in os.listdir(fd):
            if not _remove_empty_dir(fd, child):
                return False
    finally:
        os.close(fd)
    try:
        os.rmdir(name, dir_fd=parent_fd)
    except OSError:
        return False
    return True


def local_stat(root: Path, parts: tuple[str, ...], key: str) -> os.stat_result | None:
    """The stat of the file a key maps to, or None when it does not exist."""
    with _naming(root.joinpath(*parts)), _Walk(root, parts, key, create=False) as walk:
        if not walk.complete:
            return None
        return _final_stat(walk.parent_fd, parts, key)


def ensure_directory(
    root: Path, parts: tuple[str, ...], key: str, attributes: Attributes = DEFAULT_ATTRIBUTES
) -> Path:
    """Create ``root/parts`` as real directories (never through a symlink); return it."""
    with _Walk(root, (*parts, ""), key, create=True, attributes=attributes):
        return root.joinpath(*parts)


def repair_directory_attributes(
    root: Path, parts: tuple[str, ...], key: str, attributes: Attributes
) -> str | None:
    """``repair_attributes`` for the directory ``root/parts`` and those above it."""
    wrong: list[str] = []
    with _Walk(root, (*parts, ""), key, create=False) as walk:
        for depth, fd in enumerate(walk.fds[1:], start=1):
            if problem := attributes.differ(os.fstat(fd), directory=True):
                attributes.apply(fd, directory=True)
                wrong.append(f"{'/'.join(parts[:depth])}/: {problem}")
    return "; ".join(wrong) or None


def repair_attributes(
    root: Path, parts: tuple[str, ...], key: str, attributes: Attributes
) -> str | None:
    """Put back the mode and group of the file a key maps to, and of the directories
    between it and ``root`` (not ``root`` itself: that is the operator's). Returns what
    was wrong, in words, or None when all was right (or there is no file). Raises
    UnsafeKey when a symlink or directory stands at the file's name.
    """
    wrong: list[str] = []
    with _Walk(root, parts, key, create=False) as walk:
        if not walk.complete:
            return None
        for depth, fd in enumerate(walk.fds[1:], start=1):
            if problem := attributes.differ(os.fstat(fd), directory=True):
                attributes.apply(fd, directory=True)
                wrong.append(f"{'/'.join(parts[:depth])}/: {problem}")
        if _final_stat(walk.parent_fd, parts, key) is None:
            return "; ".join(wrong) or None
        # O_NONBLOCK: a FIFO swapped in since the check must not hang the open.
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        fd = os.open(parts[-1], flags, dir_fd=walk.parent_fd)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise UnsafeKey(key, f"{parts[-1]!r} is not a regular file")
            if problem := attributes.differ(st):
                attributes.apply(fd)
                wrong.append(problem)
        finally:
            os.close(fd)
    return "; ".join(wrong) or None


def remove_file(root: Path, parts: tuple[str, ...], key: str) -> bool:
    """Delete the file a key maps to and prune directories left empty.

    Returns True when a file was removed. Never removes ``root`` itself. A file standing
    where a directory of the path should be, or a directory at the file's name, means
    the file is not there: nothing to remove.
    """
    try:
        walk = _Walk(root, parts, key, create=False)
    except PathCollision:
        return False
    with walk, _naming(root.joinpath(*parts)):
        try:
            if not walk.complete or _final_stat(walk.parent_fd, parts, key) is None:
                return False
        except PathCollision:
            return False
        os.unlink(parts[-1], dir_fd=walk.parent_fd)
        # Walk back up: fds[i] holds parts[i]; remove each directory that is now empty.
        for depth in range(len(parts) - 1, 0, -1):
            try:
                os.rmdir(parts[depth - 1], dir_fd=walk.fds[depth - 1])
            except OSError:
                break  # not empty (or already gone): stop pruning
        return True


class AtomicWriter:
    """Write a file next to its target, then fsync and rename it into place.

    A reader sees either the old file or the complete new one, never a partial one.
    Leaving the ``with`` block without ``commit()`` removes the temporary file.
    """

    def __init__(
        self,
        root: Path,
        parts: tuple[str, ...],
        key: str,
        attributes: Attributes = DEFAULT_ATTRIBUTES,
    ) -> None:
        self._walk = _Walk(root, parts, key, create=True, attributes=attributes)
        self._name = parts[-1]
        self._parts = parts
        self._key = key
        self.temp_name = f"{TEMP_PREFIX}{secrets.token_hex(8)}"
        # For error messages: the whole paths, not the names relative to a descriptor.
        self._target = root.joinpath(*parts)
        self._temp_path = self._target.with_name(self.temp_name)
        self.bytes_written = 0
        self._committing = False
        self._fd: int | None = None
        try:
            # Refuse early (before downloading) if a symlink or directory is in the way.
            # Directories holding no files are what an aborted write or a crash leaves
            # behind: they give way to the file instead of blocking it forever.
            try:
                with _naming(self._target):
                    _final_stat(self._walk.parent_fd, self._parts, key)
            except UnsafeKey:
                if not _remove_empty_dir(self._walk.parent_fd, self._name):
                    raise
            with _naming(self._temp_path):
                # Read-write: a ranged download hashes what it wrote by reading it back
                # through a duplicate of this descriptor (s3pull.ranged).
                self._fd = os.open(
                    self.temp_name,
                    os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                    0o600,  # until its mode and group are set, a moment later
                    dir_fd=self._walk.parent_fd,
                )
                # Before a byte is written and long before the rename: the file appears
                # under its name with its mode and group already right (an overwrite
                # keeps them).
                attributes.apply(self._fd)
        except BaseException:
            if self._fd is not None:  # made, but its mode or group could not be set
                os.close(self._fd)
                self._fd = None
                self._unlink_temp()
            self._walk.close()
            raise

    def write(self, data: bytes) -> None:
        assert self._fd is not None, "write after commit or abort"
        view = memoryview(data)
        with _naming(self._temp_path):  # a full disk names the file it could not fill
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        self.bytes_written += len(data)

    def preallocate(self, size: int) -> None:
        """Reserve ``size`` bytes for the file before writing it out of order: a full
        disk shows now rather than after most of a large download, and ranges written
        in parallel land in one extent instead of interleaved fragments. Blocking: where
        the file system has no fallocate, glibc writes every block (run it in a thread)."""
        assert self._fd is not None, "preallocate after commit or abort"
        try:
            with _naming(self._temp_path):
                os.posix_fallocate(self._fd, 0, size)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise

    def write_at(self, data: bytes, offset: int) -> None:
        """Write ``data`` at ``offset``: the parts of a ranged download arrive out of
        order. The descriptor is looked up on every call, so a part still arriving after
        an abort fails here instead of writing through a closed (reused) descriptor."""
        assert self._fd is not None, "write after commit or abort"
        view = memoryview(data)
        with _naming(self._temp_path):
            while view:
                written = os.pwrite(self._fd, view, offset)
                view = view[written:]
                offset += written
        self.bytes_written += len(data)

    def duplicate(self) -> int:
        """A second descriptor of the temporary file, for reading it back in another
        thread. It stays valid (reading the same bytes) even if this writer is aborted
        meanwhile, so that thread never reads through a descriptor closed under it; the
        caller closes it."""
        assert self._fd is not None, "duplicate after commit or abort"
        return os.dup(self._fd)

    def claim(self) -> None:
        """Call on the event loop before running ``commit`` in a thread: from then on a
        concurrent ``abort`` (a cancelled coroutine) leaves the file to the commit."""
        self._committing = True

    def commit(self, mtime_ns: int | None = None) -> None:
        """fsync, set the modification time, rename over the target. Blocking: run in a thread."""
        assert self._fd is not None, "commit after commit or abort"
        # From here on the commit owns the temporary file: an abort() racing with it (a
        # cancelled coroutine whose thread is still committing) must not touch it.
        self._committing = True
        fd, self._fd = self._fd, None
        parent_fd = self._walk.parent_fd
        try:
            try:
                with _naming(self._temp_path):
                    if mtime_ns is not None:
                        os.utime(fd, ns=(mtime_ns, mtime_ns))
                    os.fsync(fd)  # after utime, so the mtime is as durable as the bytes
            finally:
                os.close(fd)
            with _naming(self._target):
                _final_stat(parent_fd, self._parts, self._key)  # no symlink or directory?
            try:
                with _naming(self._target):
                    os.rename(
                        self.temp_name, self._name, src_dir_fd=parent_fd, dst_dir_fd=parent_fd
                    )
            except IsADirectoryError:
                # A writer of a key below this name made the directory since the check
                # (both of "a" and "a/b" fetched at once): the same collision, found late.
                raise PathCollision(
                    self._key,
                    f"{self._name!r} is a directory (other keys live below it)",
                    blocker=self._parts,
                    is_directory=True,
                ) from None
            with _naming(self._target.parent):
                os.fsync(parent_fd)  # make the rename itself durable
        except BaseException:
            self._unlink_temp()
            raise
        finally:
            self._walk.close()

    def abort(self) -> None:
        if self._committing:
            return
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self._unlink_temp()
        self._walk.close()

    def _unlink_temp(self) -> None:
        with suppress(FileNotFoundError):
            os.unlink(self.temp_name, dir_fd=self._walk.parent_fd)

    def __enter__(self) -> AtomicWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.abort()


def is_utf8(name: str) -> bool:
    """Can ``name`` (a path from the file system) be, or be part of, an S3 key? Keys are
    UTF-8; a local name that is not comes from ``os.fsdecode`` with lone surrogates."""
    try:
        name.encode()
    except UnicodeEncodeError:
        return False
    return True


def shown_name(name: str) -> str:
    """``name`` as text that is always valid UTF-8: bytes that are not are escaped
    (``caf\\xe9.txt``). For log lines and status, never for I/O."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")

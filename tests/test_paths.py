"""paths: hostile keys, symlinks, collisions and atomic writes on a real directory tree.

Every test works on ``tmp_path/"mirror"`` (the configured directory) next to
``tmp_path/"outside"`` (what an attacker would like to reach), with no mocks: the only way
to know nothing escaped is to look at the real file system afterwards.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from s3pull.errors import UnsafeKey
from s3pull.paths import (
    TEMP_PREFIX,
    AtomicWriter,
    local_stat,
    remove_file,
    safe_parts,
)
from s3pull.walk import remove_leftover_temp_files, walk_files

PREFIX = "prefix/"
MTIME_NS = 1_700_000_000_123_456_789  # nanosecond precision on purpose
SECRET = b"outside content that must never change\n"


@dataclass(frozen=True)
class Tree:
    tmp: Path
    root: Path
    outside: Path


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    root = tmp_path / "mirror"
    outside = tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    return Tree(tmp_path, root, outside)


@pytest.fixture
def decoyed(tree: Tree) -> Tree:
    """``outside`` holds files an escaping write would clobber."""
    (tree.outside / "target").write_bytes(SECRET)
    (tree.outside / "etc").mkdir()
    (tree.outside / "etc" / "passwd").write_bytes(SECRET)
    return tree


Entry = tuple[str, str, bytes]


def snapshot(base: Path, exclude: Path | None = None) -> set[Entry]:
    """Every entry below ``base`` (no symlink followed) with its kind and content."""
    found: set[Entry] = set()
    for directory, dirs, files in os.walk(base, followlinks=False):
        here = Path(directory)
        if exclude is not None and here == exclude:
            dirs[:] = []
            continue
        for name in dirs + files:
            path = here / name
            if exclude is not None and path == exclude:
                continue
            relative = path.relative_to(base).as_posix()
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                found.add((relative, "link", os.fsencode(os.readlink(path))))
            elif stat.S_ISDIR(mode):
                found.add((relative, "dir", b""))
            else:
                found.add((relative, "file", path.read_bytes()))
    return found


def temp_files(base: Path) -> list[Path]:
    return [
        Path(directory) / name
        for directory, _dirs, files in os.walk(base, followlinks=False)
        for name in files
        if name.startswith(TEMP_PREFIX)
    ]


def write_key(root: Path, key: str, data: bytes = b"evil", prefix: str = PREFIX) -> None:
    """What the mirror does with a key: check its shape, then write it atomically."""
    parts = safe_parts(key, prefix, root)
    with AtomicWriter(root, parts, key) as writer:
        writer.write(data)
        writer.commit(MTIME_NS)


def assert_names_key(refusal: pytest.ExceptionInfo[UnsafeKey], key: str) -> None:
    assert refusal.value.key == key
    assert refusal.value.shown in str(refusal.value)  # long keys are shown shortened


def relative_of_length(n: int) -> str:
    """A relative path of exactly ``n`` bytes whose components stay well under NAME_MAX."""
    parts: list[str] = []
    remaining = n
    while remaining > 200:
        parts.append("d" * 199)
        remaining -= 200  # 199 bytes and a '/'
    parts.append("f" * remaining)
    return "/".join(parts)


# -- hostile key shapes --------------------------------------------------------------

TOO_LONG_PATH = PREFIX + relative_of_length(4200)

HOSTILE_KEYS: list[tuple[str, str, str]] = [
    # (key, prefix, a fragment of the reason)
    ("prefix/../outside/target", PREFIX, "'..' path component"),
    ("prefix/..", PREFIX, "'..' path component"),
    ("prefix/a/../../outside/target", PREFIX, "'..' path component"),
    ("prefix/a/b/..", PREFIX, "'..' path component"),
    ("../outside/target", "", "'..' path component"),
    ("prefix//etc/passwd", PREFIX, "absolute path"),
    ("/etc/passwd", "", "absolute path"),
    ("prefix/a//b", PREFIX, "'empty' path component"),
    ("prefix/a/", PREFIX, "'empty' path component"),
    ("prefix/./a", PREFIX, "'.' path component"),
    ("prefix/a/.", PREFIX, "'.' path component"),
    ("prefix/.", PREFIX, "'.' path component"),
    ("prefix/a\x00b", PREFIX, "NUL byte"),
    ("prefix/a/\x00/../../outside/target", PREFIX, "NUL byte"),
    ("prefix/" + "x" * 256, PREFIX, "longer than 255 bytes"),
    ("prefix/dir/" + "x" * 256 + "/file", PREFIX, "longer than 255 bytes"),
    ("prefix/" + "é" * 128, PREFIX, "longer than 255 bytes"),  # 128 chars, 256 bytes
    ("prefix/" + "文" * 86, PREFIX, "longer than 255 bytes"),  # 86 chars, 258 bytes
    ("prefix/" + "\N{GRINNING FACE}" * 64, PREFIX, "longer than 255 bytes"),  # 64 chars
    (TOO_LONG_PATH, PREFIX, "longer than 4096 bytes"),
    ("prefix/.s3pull-tmp-x", PREFIX, "reserved name prefix"),
    ("prefix/a/b/.s3pull-tmp-0123456789abcdef", PREFIX, "reserved name prefix"),
    ("other/target", PREFIX, "not under prefix"),
    ("prefi/x", PREFIX, "not under prefix"),
    ("PREFIX/x", PREFIX, "not under prefix"),
    ("prefix", PREFIX, "not under prefix"),
    ("prefix/", PREFIX, "names the directory itself"),
    ("", "", "names the directory itself"),
]


@pytest.mark.parametrize(
    ("key", "prefix", "reason"),
    HOSTILE_KEYS,
    ids=[repr(key)[:60] for key, _prefix, _reason in HOSTILE_KEYS],
)
def test_hostile_key_is_refused_and_nothing_escapes(
    decoyed: Tree, key: str, prefix: str, reason: str
) -> None:
    before = snapshot(decoyed.tmp)

    with pytest.raises(UnsafeKey) as refusal:
        write_key(decoyed.root, key, prefix=prefix)

    assert_names_key(refusal, key)
    assert reason in refusal.value.reason
    # A refused shape is refused before anything is touched, inside the mirror or out.
    assert snapshot(decoyed.tmp) == before


def test_multibyte_component_is_measured_in_bytes_not_characters(tree: Tree) -> None:
    name = "é" * 128
    assert len(name) <= 255 < len(name.encode())
    with pytest.raises(UnsafeKey):
        safe_parts(PREFIX + name, PREFIX, tree.root)


@pytest.mark.parametrize("name", ["x" * 255, "é" * 127 + "x", "文" * 85])
def test_component_of_255_bytes_is_accepted(tree: Tree, name: str) -> None:
    assert len(name.encode()) == 255
    write_key(tree.root, PREFIX + name, b"max")
    assert (tree.root / name).read_bytes() == b"max"
    assert os.listdir(tree.root) == [name]


def test_path_length_limit_is_exact(tree: Tree) -> None:
    # PATH_MAX (4096) counts the terminating NUL: 4095 bytes is the longest usable path.
    room = 4095 - len(os.fsencode(str(tree.root))) - 1  # the '/' after root
    longest = PREFIX + relative_of_length(room)
    too_long = PREFIX + relative_of_length(room + 1)

    write_key(tree.root, longest, b"deep")
    assert len(os.fsencode(str(tree.root / longest[len(PREFIX) :]))) == 4095
    assert dict(walk_files(tree.root)).keys() == {longest[len(PREFIX) :]}

    with pytest.raises(UnsafeKey) as refusal:
        safe_parts(too_long, PREFIX, tree.root)
    assert_names_key(refusal, too_long)


# -- symlinks ------------------------------------------------------------------------


def test_symlinked_directory_inside_mirror_is_not_followed(decoyed: Tree) -> None:
    (decoyed.root / "link").symlink_to(decoyed.outside, target_is_directory=True)
    before = snapshot(decoyed.tmp, exclude=decoyed.root)
    key = "prefix/link/evil.txt"

    with pytest.raises(UnsafeKey) as refusal:
        write_key(decoyed.root, key)

    assert_names_key(refusal, key)
    assert "'link' is a symlink" in refusal.value.reason
    assert not (decoyed.outside / "evil.txt").exists()
    assert snapshot(decoyed.tmp, exclude=decoyed.root) == before
    assert temp_files(decoyed.tmp) == []


def test_symlinked_directory_into_empty_outside(tree: Tree) -> None:
    (tree.root / "link").symlink_to(tree.outside, target_is_directory=True)
    with pytest.raises(UnsafeKey):
        write_key(tree.root, "prefix/link/evil.txt")
    assert os.listdir(tree.outside) == []


def test_symlink_deeper_in_the_tree_is_not_followed(decoyed: Tree) -> None:
    (decoyed.root / "a").mkdir()
    (decoyed.root / "a" / "b").symlink_to(decoyed.outside, target_is_directory=True)
    (decoyed.outside / "c").write_bytes(SECRET)
    before = snapshot(decoyed.tmp, exclude=decoyed.root)
    key = "prefix/a/b/c"
    parts = safe_parts(key, PREFIX, decoyed.root)

    with pytest.raises(UnsafeKey) as refusal:
        write_key(decoyed.root, key)
    assert_names_key(refusal, key)
    assert "'b' is a symlink" in refusal.value.reason

    for operation in (remove_file, local_stat):
        with pytest.raises(UnsafeKey):
            operation(decoyed.root, parts, key)

    assert (decoyed.outside / "c").read_bytes() == SECRET
    assert snapshot(decoyed.tmp, exclude=decoyed.root) == before


def test_dangling_symlink_directory_is_not_created_through(tree: Tree) -> None:
    (tree.root / "d").symlink_to(tree.outside / "new", target_is_directory=True)
    with pytest.raises(UnsafeKey) as refusal:
        write_key(tree.root, "prefix/d/x")
    assert "symlink" in refusal.value.reason
    assert os.listdir(tree.outside) == []


def test_symlink_to_a_file_used_as_a_directory_is_refused(decoyed: Tree) -> None:
    (decoyed.root / "f").symlink_to(decoyed.outside / "target")
    with pytest.raises(UnsafeKey) as refusal:
        write_key(decoyed.root, "prefix/f/x")
    assert "symlink" in refusal.value.reason
    assert (decoyed.outside / "target").read_bytes() == SECRET


def test_symlink_as_final_component_is_refused_by_writer_and_remover(decoyed: Tree) -> None:
    link = decoyed.root / "file"
    link.symlink_to(decoyed.outside / "target")
    before = snapshot(decoyed.tmp)
    key = "prefix/file"
    parts = safe_parts(key, PREFIX, decoyed.root)

    with pytest.raises(UnsafeKey) as refusal, AtomicWriter(decoyed.root, parts, key) as writer:
        writer.write(b"evil")
        writer.commit()
    assert_names_key(refusal, key)
    assert "'file' is a symlink" in refusal.value.reason

    with pytest.raises(UnsafeKey) as refusal:
        remove_file(decoyed.root, parts, key)
    assert_names_key(refusal, key)

    with pytest.raises(UnsafeKey):
        local_stat(decoyed.root, parts, key)

    assert link.is_symlink()
    assert (decoyed.outside / "target").read_bytes() == SECRET
    assert snapshot(decoyed.tmp) == before


def test_dangling_symlink_as_final_component_is_refused(tree: Tree) -> None:
    (tree.root / "file").symlink_to(tree.outside / "created-through-link")
    with pytest.raises(UnsafeKey):
        write_key(tree.root, "prefix/file")
    assert os.listdir(tree.outside) == []


def test_symlink_planted_at_target_before_commit_is_refused(decoyed: Tree) -> None:
    key = "prefix/late"
    parts = safe_parts(key, PREFIX, decoyed.root)
    with pytest.raises(UnsafeKey) as refusal, AtomicWriter(decoyed.root, parts, key) as writer:
        writer.write(b"evil")
        (decoyed.root / "late").symlink_to(decoyed.outside / "target")
        writer.commit()
    assert_names_key(refusal, key)
    assert (decoyed.root / "late").is_symlink()
    assert (decoyed.outside / "target").read_bytes() == SECRET
    assert temp_files(decoyed.tmp) == []


def test_directory_swapped_for_symlink_mid_write_cannot_redirect_it(tree: Tree) -> None:
    key = "prefix/a/b.txt"
    parts = safe_parts(key, PREFIX, tree.root)
    with AtomicWriter(tree.root, parts, key) as writer:
        # The writer holds the directory it opened, not its name: swapping the name for a
        # symlink to outside after the walk must not move the write there.
        (tree.root / "a").rename(tree.root / "a-moved")
        (tree.root / "a").symlink_to(tree.outside, target_is_directory=True)
        writer.write(b"data")
        writer.commit(MTIME_NS)
    assert os.listdir(tree.outside) == []
    assert (tree.root / "a-moved" / "b.txt").read_bytes() == b"data"
    assert temp_files(tree.tmp) == []


def test_configured_directory_may_itself_be_a_symlink(tree: Tree) -> None:
    alias = tree.tmp / "alias"
    alias.symlink_to(tree.root, target_is_directory=True)
    write_key(alias, "prefix/a/b.txt", b"ok")
    assert (tree.root / "a" / "b.txt").read_bytes() == b"ok"


# -- a key and a key below it (legal in S3, impossible on disk) -----------------------


def test_file_in_the_way_of_a_directory_is_refused(tree: Tree) -> None:
    (tree.root / "a").write_bytes(b"I am a")
    before = snapshot(tree.tmp)
    key = "prefix/a/b"

    with pytest.raises(UnsafeKey) as refusal:
        write_key(tree.root, key)

    assert_names_key(refusal, key)
    assert "'a' is a file" in refusal.value.reason
    assert snapshot(tree.tmp) == before


def test_file_deeper_in_the_way_of_a_directory_is_refused(tree: Tree) -> None:
    (tree.root / "a").mkdir()
    (tree.root / "a" / "b").write_bytes(b"I am a/b")
    with pytest.raises(UnsafeKey) as refusal:
        write_key(tree.root, "prefix/a/b/c/d")
    assert "'b' is a file" in refusal.value.reason
    assert (tree.root / "a" / "b").read_bytes() == b"I am a/b"
    assert not (tree.root / "a" / "b" / "c").exists()


def test_directory_in_the_way_of_a_file_is_refused(tree: Tree) -> None:
    (tree.root / "a").mkdir()
    (tree.root / "a" / "b").write_bytes(b"I am a/b")
    before = snapshot(tree.tmp)
    key = "prefix/a"

    with pytest.raises(UnsafeKey) as refusal:
        write_key(tree.root, key)

    assert_names_key(refusal, key)
    assert "is a directory" in refusal.value.reason
    assert snapshot(tree.tmp) == before


# -- AtomicWriter ----------------------------------------------------------------------


def test_commit_writes_content_mtime_and_parents(tree: Tree) -> None:
    key = "prefix/x/y/z.bin"
    parts = safe_parts(key, PREFIX, tree.root)
    payload = os.urandom(300_000)
    with AtomicWriter(tree.root, parts, key) as writer:
        writer.write(payload[:1000])
        writer.write(payload[1000:])
        assert writer.bytes_written == len(payload)
        writer.commit(MTIME_NS)

    target = tree.root / "x" / "y" / "z.bin"
    assert target.read_bytes() == payload
    assert target.stat().st_mtime_ns == MTIME_NS
    assert (tree.root / "x" / "y").is_dir()
    assert temp_files(tree.tmp) == []
    st = local_stat(tree.root, parts, key)
    assert st is not None and st.st_size == len(payload) and st.st_mtime_ns == MTIME_NS


def test_commit_without_mtime_keeps_the_write_time(tree: Tree) -> None:
    write_key_parts = safe_parts("prefix/now", PREFIX, tree.root)
    with AtomicWriter(tree.root, write_key_parts, "prefix/now") as writer:
        writer.write(b"now")
        writer.commit()
    assert (tree.root / "now").read_bytes() == b"now"
    assert (tree.root / "now").stat().st_mtime_ns != MTIME_NS


def test_temporary_file_lives_next_to_its_target(tree: Tree) -> None:
    key = "prefix/dir/file"
    parts = safe_parts(key, PREFIX, tree.root)
    with AtomicWriter(tree.root, parts, key) as writer:
        writer.write(b"partial")
        # Same directory, so the final rename is atomic; never visible under the real name.
        assert os.listdir(tree.root / "dir") == [writer.temp_name]
        assert writer.temp_name.startswith(TEMP_PREFIX)
        assert list(walk_files(tree.root)) == []
        writer.commit()
    assert os.listdir(tree.root / "dir") == ["file"]


def test_leaving_without_commit_leaves_nothing(tree: Tree) -> None:
    key = "prefix/new"
    parts = safe_parts(key, PREFIX, tree.root)
    before = snapshot(tree.tmp)
    with AtomicWriter(tree.root, parts, key) as writer:
        writer.write(b"half a download")
    assert snapshot(tree.tmp) == before


def test_leaving_without_commit_keeps_the_old_file(tree: Tree) -> None:
    (tree.root / "keep").write_bytes(b"old")
    before = snapshot(tree.tmp)
    key = "prefix/keep"
    parts = safe_parts(key, PREFIX, tree.root)
    with (
        pytest.raises(RuntimeError, match="connection reset"),
        AtomicWriter(tree.root, parts, key) as writer,
    ):
        writer.write(b"new but torn")
        raise RuntimeError("connection reset")
    assert snapshot(tree.tmp) == before


def test_aborted_nested_write_leaves_no_directory_behind(tree: Tree) -> None:
    key = "prefix/d/e/x"
    parts = safe_parts(key, PREFIX, tree.root)
    with AtomicWriter(tree.root, parts, key) as writer:
        writer.write(b"half a download")
    assert list(walk_files(tree.root)) == []
    assert temp_files(tree.tmp) == []
    # Empty directories an aborted download created would block key "prefix/d" forever
    # ("a directory is in the way") although no key lives below them.
    write_key(tree.root, "prefix/d", b"a file named d")
    assert (tree.root / "d").read_bytes() == b"a file named d"
    assert os.listdir(tree.root) == ["d"]


def test_overwrite_is_atomic(tree: Tree) -> None:
    target = tree.root / "doc.txt"
    target.write_bytes(b"old bytes")
    old_inode = target.stat().st_ino
    key = "prefix/doc.txt"
    parts = safe_parts(key, PREFIX, tree.root)

    with target.open("rb") as reader_of_old:
        with AtomicWriter(tree.root, parts, key) as writer:
            writer.write(b"new bytes, longer than the old ones")
            # Before commit a reader opening the path still sees the complete old file.
            assert target.read_bytes() == b"old bytes"
            writer.commit(MTIME_NS)
        assert target.read_bytes() == b"new bytes, longer than the old ones"
        # The new file replaced the old one by rename; it was never truncated in place.
        assert reader_of_old.read() == b"old bytes"
    assert target.stat().st_ino != old_inode
    assert temp_files(tree.tmp) == []


# -- remove_file -------------------------------------------------------------------------


def test_remove_file_prunes_empty_parents_but_not_root(tree: Tree) -> None:
    write_key(tree.root, "prefix/a/keep.txt")
    write_key(tree.root, "prefix/a/b/c/gone.txt")
    key = "prefix/a/b/c/gone.txt"

    assert remove_file(tree.root, safe_parts(key, PREFIX, tree.root), key) is True

    assert not (tree.root / "a" / "b").exists()
    assert (tree.root / "a" / "keep.txt").read_bytes() == b"evil"
    key = "prefix/a/keep.txt"
    assert remove_file(tree.root, safe_parts(key, PREFIX, tree.root), key) is True
    assert tree.root.is_dir()
    assert os.listdir(tree.root) == []


def test_remove_file_keeps_non_empty_parents(tree: Tree) -> None:
    write_key(tree.root, "prefix/a/b/one")
    write_key(tree.root, "prefix/a/b/two")
    key = "prefix/a/b/one"
    assert remove_file(tree.root, safe_parts(key, PREFIX, tree.root), key) is True
    assert os.listdir(tree.root / "a" / "b") == ["two"]


def test_remove_file_at_top_level_keeps_root(tree: Tree) -> None:
    write_key(tree.root, "prefix/only")
    assert remove_file(tree.root, ("only",), "prefix/only") is True
    assert tree.root.is_dir()
    assert os.listdir(tree.root) == []


def test_remove_file_missing(tree: Tree) -> None:
    (tree.root / "a").mkdir()
    before = snapshot(tree.tmp)
    assert remove_file(tree.root, ("a", "missing"), "prefix/a/missing") is False
    assert remove_file(tree.root, ("no", "such", "dir", "f"), "prefix/no/such/dir/f") is False
    assert remove_file(tree.root, ("missing",), "prefix/missing") is False
    # Nothing created, and the empty directory that was there is not pruned either.
    assert snapshot(tree.tmp) == before


def test_remove_file_leaves_a_directory_alone(tree: Tree) -> None:
    # A directory where the file would be, or a file where a directory of the path would
    # be, means the file is not there: nothing is removed, nothing is refused.
    (tree.root / "a").mkdir()
    (tree.root / "a" / "b").write_bytes(b"b")
    assert remove_file(tree.root, ("a",), "prefix/a") is False
    assert remove_file(tree.root, ("a", "b", "c"), "prefix/a/b/c") is False
    assert (tree.root / "a" / "b").read_bytes() == b"b"


# -- walk_files ------------------------------------------------------------------------


def test_walk_files_reports_regular_files_only(decoyed: Tree) -> None:
    root = decoyed.root
    (root / "a" / "b").mkdir(parents=True)
    (root / "top.txt").write_bytes(b"1")
    (root / "a" / "b" / "deep.txt").write_bytes(b"22")
    (root / "a" / f"{TEMP_PREFIX}0123").write_bytes(b"partial")
    (root / "file-link").symlink_to(decoyed.outside / "target")
    (root / "dir-link").symlink_to(decoyed.outside, target_is_directory=True)
    (root / "a" / "empty").mkdir()

    found = dict(walk_files(root))

    assert found.keys() == {"top.txt", "a/b/deep.txt"}
    assert found["a/b/deep.txt"].st_size == 2
    assert found["top.txt"].st_ino == (root / "top.txt").stat().st_ino


def test_walk_files_matches_what_keys_map_to(tree: Tree) -> None:
    keys = ["prefix/x", "prefix/d/y z", "prefix/d/e/ünï", f"prefix/{TEMP_PREFIX}dir/real"]
    for key in keys:
        write_key(tree.root, key)
    assert sorted(relative for relative, _st in walk_files(tree.root)) == sorted(
        key[len(PREFIX) :] for key in keys
    )


def test_walk_files_of_a_missing_directory_is_empty(tree: Tree) -> None:
    assert list(walk_files(tree.root / "missing")) == []


# -- remove_leftover_temp_files --------------------------------------------------------


def test_remove_leftover_temp_files_removes_only_temp_files(tree: Tree) -> None:
    root = tree.root
    (root / "a" / "b").mkdir(parents=True)
    (root / f"{TEMP_PREFIX}1").write_bytes(b"crash")
    (root / "a" / "b" / f"{TEMP_PREFIX}2").write_bytes(b"crash")
    (root / "a" / "keep.txt").write_bytes(b"keep")
    (root / "a" / f"x{TEMP_PREFIX}3").write_bytes(b"keep")
    (root / "a" / TEMP_PREFIX.rstrip("-")).write_bytes(b"keep")
    (root / f"{TEMP_PREFIX}dir").mkdir()  # a real key's directory may carry the prefix
    (root / f"{TEMP_PREFIX}dir" / "real").write_bytes(b"keep")

    assert remove_leftover_temp_files(root) == 2

    assert {relative for relative, _st in walk_files(root)} == {
        "a/keep.txt",
        f"a/x{TEMP_PREFIX}3",
        f"a/{TEMP_PREFIX.rstrip('-')}",
        f"{TEMP_PREFIX}dir/real",
    }
    assert temp_files(root) == []
    assert remove_leftover_temp_files(root) == 0


def test_remove_leftover_temp_files_does_not_follow_symlinks(tree: Tree) -> None:
    victim = tree.outside / f"{TEMP_PREFIX}not-ours"
    victim.write_bytes(SECRET)
    (tree.outside / "sub").mkdir()
    (tree.outside / "sub" / f"{TEMP_PREFIX}deeper").write_bytes(SECRET)
    (tree.root / "link").symlink_to(tree.outside, target_is_directory=True)
    (tree.root / f"{TEMP_PREFIX}link").symlink_to(victim)
    before = snapshot(tree.tmp, exclude=tree.root)

    remove_leftover_temp_files(tree.root)

    assert victim.read_bytes() == SECRET
    assert snapshot(tree.tmp, exclude=tree.root) == before
    assert (tree.root / "link").is_symlink()


# -- odd but harmless names --------------------------------------------------------------

ORDINARY_NAMES = [
    "with space.txt",
    " leading and trailing ",
    "a+b",
    "café ünïcödé 文件 \N{GRINNING FACE}.txt",
    "$(touch pwned)",
    "`touch pwned`",
    "a;touch pwned",
    "x | touch pwned",
    "x && touch pwned",
    "line\nbreak",
    "tab\there",
    "-rf",
    "--help",
    "*",
    "?",
    "~",
    "'quoted\"",
    "back\\slash",
    "..\\..\\windows",
    "...",
    "..a",
    "a..",
    ".hidden",
    "%2e%2e",
    "\x01control\x7f",
]


def _everything_named(base: Path, name: str) -> Iterator[Path]:
    for directory, dirs, files in os.walk(base, followlinks=False):
        for entry in dirs + files:
            if entry == name:
                yield Path(directory) / entry


def test_shell_metacharacters_and_unicode_are_ordinary_names(
    tree: Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tree.tmp)  # a stray shell would create "pwned" in the cwd
    for index, name in enumerate(ORDINARY_NAMES):
        content = f"{index}:{name}".encode()
        write_key(tree.root, PREFIX + name, content)
        assert (tree.root / name).read_bytes() == content
        write_key(tree.root, f"{PREFIX}nested {index}/{name}", content)
        assert (tree.root / f"nested {index}" / name).read_bytes() == content

    top_level = set(os.listdir(tree.root))
    assert set(ORDINARY_NAMES) <= top_level
    assert os.listdir(tree.outside) == []
    assert [p for p in tree.tmp.iterdir() if p not in (tree.root, tree.outside)] == []
    assert list(_everything_named(tree.tmp, "pwned")) == []
    assert len(dict(walk_files(tree.root))) == 2 * len(ORDINARY_NAMES)

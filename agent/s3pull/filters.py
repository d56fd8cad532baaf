"""A mirror's ``include`` / ``exclude`` globs: which keys below its prefix it keeps.

Patterns follow .gitignore (pathspec's "gitignore" flavour): ``*`` and ``?`` stay inside
one folder name, ``**`` spans folders, a pattern without a ``/`` (but a trailing one)
matches at any depth, a leading ``/`` anchors it at the mirror's prefix, ``dir/`` means
everything below ``dir``, and a later ``!pattern`` takes an earlier match back.

Why pathspec and not the standard library: ``fnmatch`` lets ``*`` cross ``/``, and the
stdlib globs that do not (``glob.translate``, ``PurePath.full_match``) arrive with Python
3.13, while s3pull runs on 3.11. pathspec is pure Python, has no dependencies, and is the
matcher black, hatch and yamllint use for the same semantics.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

# pathspec is imported only where patterns are compiled: a mirror that keeps every key (the
# default) never needs it, and it costs every start 10-30 ms.
if TYPE_CHECKING:
    from pathspec import PathSpec, Pattern

__all__ = ["ALL", "KeyFilter", "key_filter", "pattern_problem"]

ALL: tuple[str, ...] = ("**",)

_FLAVOUR = "gitignore"


def pattern_problem(pattern: str) -> str | None:
    """What is wrong with one pattern, or None when pathspec takes it."""
    if not pattern.strip():
        return "must not be empty or blank"
    if pattern != pattern.strip():
        # .gitignore drops trailing spaces silently; a key may end in one. Say so instead.
        return f"must not start or end with spaces, got {pattern!r}"
    if pattern.startswith("#"):
        return f"is a comment in .gitignore syntax and would match nothing, got {pattern!r}"
    from pathspec import PathSpec
    from pathspec.patterns.gitignore import GitIgnorePatternError

    try:
        spec = PathSpec.from_lines(_FLAVOUR, [pattern])
    except (GitIgnorePatternError, ValueError) as exc:
        return f"is not a valid glob pattern ({exc})"
    if not any(p.include is not None for p in spec.patterns):
        return f"matches nothing, got {pattern!r}"
    return None


@dataclass(frozen=True, slots=True)
class KeyFilter:
    """Compiled ``include`` and ``exclude`` lists of one mirror; None for both when it keeps
    every key (the common case: nothing to compile, nothing to match)."""

    include: PathSpec[Pattern] | None
    exclude: PathSpec[Pattern] | None

    def selects(self, relative: str) -> bool:
        """Is the key ``relative`` (below the mirror's prefix) one the mirror keeps?"""
        if self.include is None or self.exclude is None:
            return True
        return self.include.match_file(relative) and not self.exclude.match_file(relative)


@functools.lru_cache(maxsize=64)
def key_filter(include: Sequence[str], exclude: Sequence[str]) -> KeyFilter:
    """The compiled filter for validated pattern lists (cached: configurations are
    compared and rebuilt on reload, the patterns rarely change)."""
    if tuple(include) == ALL and not exclude:
        return KeyFilter(include=None, exclude=None)
    from pathspec import PathSpec

    return KeyFilter(
        include=PathSpec.from_lines(_FLAVOUR, include),
        exclude=PathSpec.from_lines(_FLAVOUR, exclude),
    )

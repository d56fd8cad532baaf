"""The mass-deletion guard: when a reconcile may not delete what it planned to.

A listing is S3's word on a whole prefix at once, so one that is wrong (a prefix typo,
a permission withdrawn from a role, a bucket emptied by mistake, a listing cut short)
would have a reconcile delete a whole mirror in one go. ``max_delete`` bounds that; an
empty listing of a mirror that holds files is always suspect. Event-driven deletions
are not counted: each is one key, confirmed by its own HEAD (see README).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ALLOW_FLAG", "DeleteLimit", "held_back_reason"]

ALLOW_FLAG = "--allow-mass-delete"


@dataclass(frozen=True, slots=True)
class DeleteLimit:
    """``max_delete``: a count of files, or a percentage of the mirror's files."""

    count: int | None = None
    percent: float | None = None

    def __str__(self) -> str:
        if self.percent is not None:
            return f'"{self.percent:g}%"'
        return str(self.count)

    def exceeded(self, deletions: int, files: int) -> bool:
        if self.count is not None:
            return deletions > self.count
        assert self.percent is not None
        return deletions * 100 > self.percent * files


def held_back_reason(
    limit: DeleteLimit | None, deletions: int, files: int, listed: int
) -> str | None:
    """Why ``deletions`` of a mirror's ``files`` local files must wait for an operator,
    when S3 listed ``listed`` objects for it; None when they may go ahead."""
    if deletions == 0:
        return None
    if listed == 0:
        return f"S3 listed no object for a mirror holding {files} file(s)"
    if limit is not None and limit.exceeded(deletions, files):
        return f"{deletions} of {files} file(s) is more than max_delete = {limit}"
    return None

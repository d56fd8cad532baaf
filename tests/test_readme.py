"""The README is where an operator looks things up: its key table and its links must hold."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from s3pull.config import (
    AgentConfig,
    AwsConfig,
    MetricsConfig,
    MirrorConfig,
    QueueConfig,
    TriggerConfig,
)

README = Path(__file__).resolve().parent.parent / "README.md"

# TOML keys are exactly the records' field names (config.py), so the records list every key.
_TABLES = {
    "[aws]": AwsConfig,
    "[queue]": QueueConfig,
    "[agent]": AgentConfig,
    "[[mirror]]": MirrorConfig,
    "[[trigger]]": TriggerConfig,
    "[metrics]": MetricsConfig,
}


def _reference_rows() -> set[str]:
    """The `[table] key` cells of the README's configuration reference table."""
    text = README.read_text()
    section = text.split("### Configuration reference", 1)[1].split("\n#", 1)[0]
    return set(re.findall(r"^\| `(\[\[?\w+\]\]? \w+)` \|", section, re.M))


def test_every_configuration_key_has_a_row_in_the_reference_table() -> None:
    keys = {
        f"{table} {field.name}"
        for table, record in _TABLES.items()
        for field in dataclasses.fields(record)
    }
    rows = _reference_rows()
    assert keys - rows == set(), "keys the README's reference table lacks"
    assert rows - keys == set(), "rows for keys that do not exist"


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_link_within_the_readme_reaches_a_heading() -> None:
    text = README.read_text()
    outside_code = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    headings = {_anchor(h) for h in re.findall(r"^#+ (.+)$", outside_code, re.M)}
    links = set(re.findall(r"\]\(#([^)]+)\)", text))
    assert links, "the contents list links to the sections"
    assert links - headings == set(), "links to headings that do not exist"

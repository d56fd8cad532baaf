"""`--help` says what each verb does, its exit codes and where to read more; the man
page documents every verb and option the parser has (issue 16, item 11)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from conftest import run_s3pull as s3pull
from s3pull.cli import build_parser
from s3pull.helptext import VERBS

MAN_PAGE = Path(__file__).parent.parent / "packaging" / "files" / "s3pull.1"
COMMON = {"--config", "-v", "--verbose", "-h", "--help"}  # the OPTIONS section's


def verbs(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, argparse.ArgumentParser]:
    """Every verb of the parser, nested ones ("dlq list") included, by its words."""
    found: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                words = f"{prefix}{name}"
                found[words] = sub
                found.update(verbs(sub, words + " "))
    return found


def options(parser: argparse.ArgumentParser) -> set[str]:
    return {flag for action in parser._actions for flag in action.option_strings}


def leaves() -> dict[str, argparse.ArgumentParser]:
    """The verbs that run something (not "dlq", which only groups its actions)."""
    every = verbs(build_parser())
    return {w: p for w, p in every.items() if not any(o.startswith(w + " ") for o in every)}


def man_sections() -> dict[str, str]:
    """The man page's text (roff's escaped '-' plain again) by section and subsection."""
    text = MAN_PAGE.read_text().replace("\\-", "-")
    sections: dict[str, str] = {}
    title = ""
    for line in text.splitlines():
        heading = re.match(r'\.S[HS] "?([^"]*)"?$', line)
        if heading:
            title = heading.group(1)
            sections[title] = ""
        elif title:
            sections[title] += line + "\n"
    return sections


@pytest.mark.parametrize("words", sorted(verbs(build_parser())))
def test_each_verb_help_says_what_it_does_its_exit_codes_and_where_to_read_more(
    words: str,
) -> None:
    result = s3pull(*words.split(), "--help")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    head = text.split("\n\n")[1]  # after the usage: the one-line description
    assert head.endswith(".") and "\n" not in head, text
    assert "exit status:\n  0   " in text
    assert "\n  2   usage error" in text
    if words != "demo":
        assert "\n  78  configuration error" in text
    assert 'more: README.md, section "' in text
    assert "`man s3pull`" in text


def test_the_readme_sections_help_points_to_exist() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    headings = {line.lstrip("#").strip() for line in readme.splitlines() if line.startswith("#")}
    for words, text in VERBS.items():
        assert text.section in headings, (words, text.section)


def test_the_man_page_documents_every_verb_and_option_of_the_parser() -> None:
    sections = man_sections()
    for words, parser in leaves().items():
        section = sections.get(f"s3pull {words}")
        assert section is not None, f"the man page has no section 's3pull {words}'"
        for flag in sorted(options(parser) - COMMON):
            assert re.search(rf"{re.escape(flag)}\b", section), (words, flag)
    for flag in COMMON | {"--version"}:
        assert re.search(rf"{re.escape(flag)}\b", sections["OPTIONS"]), flag

"""The documentation stays in step with the code: the flag table of docs/training.md lists exactly
the flags of ``python -m training.fit``, the README stays a front page, and no relative link in
README.md or docs/ points to a missing file."""

from __future__ import annotations

import pathlib
import re

from training.fit import build_parser

REPO = pathlib.Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
README_MAX_LINES = 250

_FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
_CODE_SPAN = re.compile(r"(`+)(?!`).*?(?<!`)\1(?!`)", re.DOTALL)
_INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
_REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.MULTILINE)
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def _fit_flags():
    """Long option strings of training.fit's parser, --help excluded."""
    return {option for action in build_parser()._actions for option in action.option_strings
            if option.startswith("--") and option != "--help"}


def _table_rows(text, first_header):
    """Rows (lists of cells) of every markdown table whose first header cell is ``first_header``."""
    rows, in_table = [], False
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped.startswith("|"):
            in_table = False
            continue
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", stripped.strip("|"))]
        if not in_table:
            in_table = cells[0] == first_header
            continue
        if all(re.fullmatch(r":?-+:?", cell) for cell in cells):
            continue  # the separator row
        rows.append(cells)
    return rows


def _documented_fit_flags():
    rows = _table_rows((DOCS / "training.md").read_text(), "flag")
    assert rows, "docs/training.md has no table whose first column is 'flag'"
    flags = []
    for cells in rows:
        found = re.findall(r"`(--[A-Za-z0-9][A-Za-z0-9-]*)`", cells[0])
        assert len(found) == 1, f"docs/training.md: a flag row must name one flag in backticks, got {cells[0]!r}"
        flags.append(found[0])
    duplicates = sorted({flag for flag in flags if flags.count(flag) > 1})
    assert not duplicates, f"docs/training.md lists these flags more than once: {duplicates}"
    return set(flags)


def test_training_flag_table_matches_the_parser():
    parser_flags, documented = _fit_flags(), _documented_fit_flags()
    missing, extra = sorted(parser_flags - documented), sorted(documented - parser_flags)
    assert not missing and not extra, (
        f"docs/training.md's flag table is out of step with training/fit.py's parser: "
        f"missing from the table {missing}; in the table but not in the parser {extra}")


def test_readme_is_a_front_page():
    lines = len(README.read_text().splitlines())
    assert lines <= README_MAX_LINES, (
        f"README.md has {lines} lines, at most {README_MAX_LINES}: move the details into docs/")


def _relative_links(path):
    text = _CODE_SPAN.sub("", _FENCE.sub("", path.read_text()))
    targets = _INLINE_LINK.findall(text) + _REFERENCE_LINK.findall(text)
    return [target for target in targets if not _SCHEME.match(target) and not target.startswith("#")]


def test_relative_links_point_to_files_that_exist():
    pages = [README, *sorted(DOCS.glob("*.md"))]
    assert len(pages) > 1, "docs/ holds no pages"
    broken = []
    for page in pages:
        for target in _relative_links(page):
            file_part = target.split("#", 1)[0].split("?", 1)[0]
            if not (page.parent / file_part).exists():
                broken.append(f"{page.relative_to(REPO)}: {target}")
    assert not broken, f"relative links to files that do not exist: {broken}"


def test_the_link_checker_sees_links():
    """A checker that found no links would pass anything."""
    links = _relative_links(README)
    assert "docs/training.md" in links
    assert "benchmarks/results/protocol_omniglot_1shot-residual80_time.png" in links

"""Citations point into ``theory/``: every ``theory/<file>.md#anchor`` exists, and no old section number remains.

The mathematics lives in ``theory/*.md``; code, notebooks and docs cite it by file and heading anchor (the slug a
Markdown renderer gives the heading). The numbering of the first specification ("THEORY §n") is translated once,
in ``theory/README.md#section-numbers-of-the-first-specification``, and nowhere else.
"""

import re
import subprocess

from helpers import ROOT

CITATION = re.compile(r"theory/([a-z_]+\.md)#([a-z0-9-]+)")
OLD = re.compile(r"THEORY(\.md)? ?§|THEORY\.md|(?<![\w/])§\d")
#: The translation table of the old numbering, and this test, which names it.
EXEMPT = ("theory/README.md", "tests/project/test_citations.py")


def slug(heading: str) -> str:
    """The anchor of a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def anchors(page: str) -> set[str]:
    lines = (ROOT / "theory" / page).read_text().splitlines()
    return {slug(line.lstrip("#")) for line in lines if line.startswith("#")}


def tracked_text_files() -> list[str]:
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    return [f for f in files if re.search(r"\.(py|md|ipynb|toml|yml)$", f)]


def test_slug_follows_the_markdown_rule():
    assert slug(" Certificate `B`") == "certificate-b"
    assert slug(" Test 2: necessary data-level condition") == "test-2-necessary-data-level-condition"


def test_citations_resolve_and_use_no_section_numbers():
    problems = []
    for path in tracked_text_files():
        text = (ROOT / path).read_text()
        for page, anchor in CITATION.findall(text):
            if not (ROOT / "theory" / page).exists() or anchor not in anchors(page):
                problems.append(f"{path}: theory/{page}#{anchor} is no heading of theory/{page}")
        if path not in EXEMPT:
            problems += [f"{path}: {m.group(0)!r} (cite theory/<file>.md#anchor)" for m in OLD.finditer(text)]
    assert not problems, "\n".join(problems)

"""The design the code cites is in the repository: every ``docs/design.md §N`` in znni, its
templates, tests and benchmarks names a section that docs/design.md has."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CITATION = re.compile(r"docs/design\.md\s+§(\d+(?:\.\d+)?)")
HEADING = re.compile(r"^#{2,3} (\d+(?:\.\d+)?)\. |^#{2,3} (\d+(?:\.\d+)?) ", re.MULTILINE)


def test_every_cited_section_exists() -> None:
    design = (ROOT / "docs" / "design.md").read_text()
    sections = {a or b for a, b in HEADING.findall(design)}
    cited = {}
    for folder in ("znni", "tests", "bench"):
        for path in (ROOT / folder).rglob("*"):
            if path.is_file() and path.suffix in (".py", ".j2", ".h", ".md"):
                for number in CITATION.findall(path.read_text(errors="replace")):
                    cited.setdefault(number, path.relative_to(ROOT))
    assert len(cited) > 5  # the code does cite it
    missing = {n: str(p) for n, p in cited.items() if n not in sections}
    assert not missing, f"cited sections absent from docs/design.md: {missing}"


def test_no_citation_of_a_document_the_repository_lacks() -> None:
    for folder in ("znni", "tests", "bench"):
        for path in (ROOT / folder).rglob("*"):
            if path.is_file() and path.suffix in (".py", ".j2", ".h"):
                assert "DESIGN" + " §" not in path.read_text(errors="replace"), path

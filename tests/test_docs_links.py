"""The documentation keeps its references inside the repository.

- No file in fedmm/, docs/, tests/, experiments/ or README.md names a file a user does not have
  (the specification files the project was written from, or a ``shared/`` folder).
- Every ``docs/<page>.md §N`` citation points to an existing page with a heading numbered N
  (``## 3. Title`` or ``### 3.4 Title``; docs/methods/ numbers its sections for this).
- Every relative Markdown link in docs/ and README.md resolves: the file exists and, for an anchor
  into a Markdown file, a heading of that file has that anchor (GitHub's slug rule).
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("fedmm", "docs", "tests", "experiments")
TEXT_SUFFIXES = {".py", ".md", ".toml", ".txt", ".cfg", ".ini", ".yaml", ".yml", ".sh", ".json"}
SKIPPED_DIRS = {"__pycache__", "out", ".ipynb_checkpoints"}

#: Names of files outside the repository (built from parts, so that this file does not name them).
OUTSIDE = re.compile(
    "|".join(
        [
            "FEDCMI" + "_CMSFED",
            "BALANCING" + "_OBJECTIVES",
            "PAPER" + "_PRESETS",
            "DEVICES" + "_AND_OORT",
            "MODALITY" + "_COMPETITION",
            "FLOWER" + "_NOTES",
            r"\bDATASETS" + r"\.md",
            r"\bDESIGN" + r"\.md",
            r"\bshared" + "/",
        ]
    )
)
#: ``docs/methods/cmsfed.md §5.1``, ``docs/methods/cmsfed.md §4.1, §8``, ``... §3 and §5``.
CITATION = re.compile(r"(docs/[\w./-]+?\.md)((?:\s*(?:,|and)?\s*§\d+(?:\.\d+)*)+)")
SECTION = re.compile(r"§(\d+(?:\.\d+)*)")
NUMBERED_HEADING = re.compile(r"^#{1,6}\s+§?(\d+(?:\.\d+)*)\.?\s", re.MULTILINE)
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
LINK = re.compile(r"(?<!!)\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^()\s]+)(?:\s+\"[^\"]*\")?\)")
IMAGE = re.compile(r"!\[[^\]]*\]\(([^()\s]+)\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")


def text_files() -> list[Path]:
    files = [ROOT / "README.md"]
    for top in SCANNED:
        for path in sorted((ROOT / top).rglob("*")):
            rel = path.relative_to(ROOT)
            if path.is_file() and path.suffix in TEXT_SUFFIXES and not SKIPPED_DIRS & set(rel.parts):
                files.append(path)
    return [f for f in files if f.exists() and f.resolve() != Path(__file__).resolve()]


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


@cache
def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: formatting marks dropped, lower case, punctuation removed,
    spaces to hyphens."""
    text = re.sub(r"[`*]", "", heading).strip().lower()
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link in a heading keeps its text
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


@cache
def anchors(path: Path) -> frozenset[str]:
    seen: dict[str, int] = {}
    out = set()
    for heading in HEADING.findall(FENCE.sub("", read(path))):
        base = slug(heading)
        n = seen.get(base, 0)
        out.add(base if n == 0 else f"{base}-{n}")
        seen[base] = n + 1
    return frozenset(out)


@cache
def section_numbers(path: Path) -> frozenset[str]:
    return frozenset(NUMBERED_HEADING.findall(FENCE.sub("", read(path))))


def test_no_file_outside_the_repository_is_cited():
    found = [
        f"{rel(path)}:{n}: {line.strip()}"
        for path in text_files()
        for n, line in enumerate(read(path).splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert not found, (
        "cite the project's own pages (docs/methods/<page>.md §N) instead of files a user "
        "does not have:\n" + "\n".join(found)
    )


def citations() -> list[tuple[str, str, str]]:
    out = []
    for path in text_files():
        for match in CITATION.finditer(read(path)):
            for number in SECTION.findall(match.group(2)):
                out.append((rel(path), match.group(1), number))
    return out


def test_the_code_cites_the_method_pages():
    cited = {(page, number) for _, page, number in citations()}
    assert ("docs/methods/cmsfed.md", "5.1") in cited and ("docs/methods/fedcmi.md", "4") in cited


def test_every_section_citation_names_an_existing_page_and_section():
    bad = []
    for source, page, number in citations():
        target = ROOT / page
        if not target.is_file():
            bad.append(f"{source}: {page} §{number}: no such page")
        elif number not in section_numbers(target):
            bad.append(
                f"{source}: {page} §{number}: the page has no section {number} "
                f"(it has {', '.join(sorted(section_numbers(target))) or 'no numbered sections'})"
            )
    assert not bad, "\n".join(bad)


def links(path: Path) -> list[str]:
    text = INLINE_CODE.sub("", FENCE.sub("", read(path)))
    return LINK.findall(text) + IMAGE.findall(text)


@pytest.mark.parametrize("path", markdown_files(), ids=rel)
def test_every_relative_link_resolves(path: Path):
    bad = []
    for target in links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        if not resolved.exists():
            bad.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            bad.append(f"{target}: {rel(resolved)} has no heading with the anchor #{anchor}")
    assert not bad, f"{rel(path)}:\n" + "\n".join(bad)


def test_the_slug_rule_matches_githubs():
    assert slug("`ogm-ge` — OGM-GE (Peng et al., CVPR 2022)") == "ogm-ge--ogm-ge-peng-et-al-cvpr-2022"
    assert slug("3.4 The ME (modal-enhancement) loss") == "34-the-me-modal-enhancement-loss"
    assert slug("7.2 Coverage starts at +inf") == "72-coverage-starts-at-inf"

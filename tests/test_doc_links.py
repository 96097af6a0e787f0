"""Every relative link of the README and the docs pages points at a file of the repository (and a
heading of it, for a ``#anchor``)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: Pages that other branches of issues 22-25 add (the README links them already); drop a name once
#: its branch is merged.
PENDING = {"docs/selection.md", "docs/presets.md", "docs/validation.md", "docs/devices.md", "docs/python_api.md",
           "docs/results.md", "docs/tracking.md"}
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_every_relative_link_resolves() -> None:
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target in LINK.findall(page.read_text()):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            name = str(file.relative_to(REPO)) if file.is_relative_to(REPO) else str(file)
            if not file.exists():
                if name not in PENDING:
                    broken.append(f"{page.name}: {target}")
                continue
            if anchor and file.suffix == ".md":
                anchors = {_anchor(m) for m in re.findall(r"^#+ (.+)$", file.read_text(), re.M)}
                if anchor not in anchors:
                    broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, broken

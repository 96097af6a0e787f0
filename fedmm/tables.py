"""Markdown tables: the one way fedmm and its benchmark scripts write one (no imports)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def markdown_row(cells: Sequence[object]) -> str:
    """One GitHub Markdown table line: ``| a | b |`` (each cell as ``str``, not escaped)."""
    return "| " + " | ".join(map(str, cells)) + " |"


def markdown_lines(header: Sequence[object], rows: Iterable[Sequence[object]] = ()) -> list[str]:
    """The lines of a GitHub Markdown table: ``header``, its separator, then one line per row.

    Parameters
    ----------
    header:
        The column titles.
    rows:
        The rows' cells (a caller may also append :func:`markdown_row` lines later).
    """
    return [markdown_row(header), "|" + "---|" * len(header), *(markdown_row(r) for r in rows)]

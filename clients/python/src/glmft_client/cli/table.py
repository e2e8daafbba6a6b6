"""A plain-text table with wrapped cells, for ``compare``."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence


def column_widths(count: int, total: int, first: int = 4) -> list[int]:
    """A narrow first column (the row number), the rest sharing ``total`` characters."""
    rest = max(10, (total - first - 3 * count - 1) // max(1, count - 1))
    return [first] + [rest] * (count - 1)


def render_table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], widths: Sequence[int]
) -> str:
    """``headers`` and ``rows`` in bordered columns of ``widths``, long cells wrapped."""
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def lines_of(cells: Sequence[str]) -> list[str]:
        wrapped = [
            [
                line
                for part in str(cell).splitlines() or [""]
                for line in (textwrap.wrap(part, width) or [""])
            ]
            for cell, width in zip(cells, widths, strict=True)
        ]
        height = max(len(w) for w in wrapped)
        return [
            "| "
            + " | ".join(
                (w[i] if i < len(w) else "").ljust(width)
                for w, width in zip(wrapped, widths, strict=True)
            )
            + " |"
            for i in range(height)
        ]

    out = [rule, *lines_of(headers), rule.replace("-", "=")]
    for row in rows:
        out += [*lines_of(row), rule]
    return "\n".join(out)

"""Plain-text tables that fit the book's column.

Every table the chapters print goes through `format_table`. Plain text on purpose:
nbval compares it exactly, it needs no pandas, and it reads the same in Colab, in a
terminal and on the rendered page. The rendered page's column holds about 78
characters of printed output (688 px at 1280 px); the book's style sheet wraps
longer lines at spaces, which would break a table's rows in the middle. So a table
wider than `TABLE_WIDTH` wraps its *text* cells and headers inside their own
columns instead: a row then spans several lines, and its continuation lines leave
the first column empty (or indented, when the first column itself must wrap), so
each row still starts at the left edge. Numbers never wrap.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from typing import Any

#: Characters of printed output that fit the rendered column (688 px less padding, of 8.43 px
#: glyphs, tests/book/test_book_render.py measures it in a real browser).
TABLE_WIDTH = 77
#: Spaces between two columns.
GAP = "  "
#: Indent of the first column's continuation lines, when even it must wrap.
HANG = "  "


def format_cell(value: Any, decimals: int = 1) -> str:
    """One cell's text: thousands separators for ints, `decimals` for floats, '' for None."""
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        text = f"{value:,.{decimals}f}"
        return text[1:] if text.startswith("-") and not text.strip("-0.,") else text  # no -0.0
    return str(value)


def _longest_word(text: str) -> int:
    return max((len(word) for word in text.split()), default=0)


def fit_widths(
    natural: Sequence[int], floors: Sequence[int], width: int = TABLE_WIDTH, last: int | None = None
) -> list[int]:
    """Column widths that fit `width`: narrow the widest wrappable column first.

    `natural` is each column's unwrapped width, `floors` the narrowest it may get
    (its longest word; equal to `natural` for a column that must not wrap). Column
    `last`, if given, is narrowed only once every other column is at its floor. When
    even the floors do not fit, the floors are returned and the table is wider than
    `width` (the browser test reports it).
    """
    widths = list(natural)
    budget = width - len(GAP) * (len(widths) - 1)
    while sum(widths) > budget:
        candidates = [i for i, w in enumerate(widths) if w > floors[i] and i != last]
        if not candidates and last is not None and widths[last] > floors[last]:
            candidates = [last]
        if not candidates:
            break
        widest = max(candidates, key=lambda i: widths[i] - floors[i])
        widths[widest] -= 1
    return widths


def format_table(
    rows: Sequence[dict[str, Any]],
    columns: Sequence[str] | None = None,
    decimals: dict[str, int] | None = None,
    width: int = TABLE_WIDTH,
) -> str:
    """A monospace table: header, rule, one line per row; numbers right-aligned.

    Floats get one decimal unless `decimals` names the column ({"ratio": 2}). A
    table wider than `width` characters wraps its text cells and headers (see the
    module docstring); one that fits is laid out on one line per row.
    """
    if not rows:
        raise ValueError("format_table needs at least one row")
    columns = list(columns or rows[0].keys())
    decimals = decimals or {}
    cells = [[format_cell(row.get(c), decimals.get(c, 1)) for c in columns] for row in rows]
    numeric = [
        all(isinstance(row.get(c), (int, float)) or row.get(c) is None for row in rows)
        for c in columns
    ]
    natural = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    # Numbers never wrap; headers and other text wrap down to their longest word. The
    # first column names the row: it wraps last, with a hanging indent, so a row's
    # first line is still the one that starts at the left edge.
    floors = [
        max(_longest_word(c), *(len(r[i]) if numeric[i] else _longest_word(r[i]) for r in cells))
        + (len(HANG) if i == 0 and not numeric[0] else 0)
        for i, c in enumerate(columns)
    ]
    widths = fit_widths(natural, floors, width, last=0)

    def block(values: Sequence[str]) -> list[str]:
        wrapped = [
            textwrap.wrap(v, w, break_long_words=False, subsequent_indent=HANG if i == 0 else "")
            or [""]
            if len(v) > w
            else [v]
            for i, (v, w) in enumerate(zip(values, widths, strict=True))
        ]
        height = max(len(parts) for parts in wrapped)
        lines = []
        for k in range(height):
            parts = [p[k] if k < len(p) else "" for p in wrapped]
            aligned = [
                part.rjust(w) if num else part.ljust(w)
                for part, w, num in zip(parts, widths, numeric, strict=True)
            ]
            lines.append(GAP.join(aligned).rstrip())
        return lines

    header = block(columns)
    rule = GAP.join("-" * w for w in widths)
    body = [line for r in cells for line in block(r)]
    return "\n".join([*header, rule, *body])


def markdown_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int]
) -> str:
    """A Markdown table (columns whose index is in `right` aligned right): a real table in
    Jupyter Book, JupyterLab and Colab, where the text tables above stay monospace."""
    align = "|" + "".join("---:|" if i in right else "---|" for i in range(len(header)))
    lines = ["| " + " | ".join(header) + " |", align]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)

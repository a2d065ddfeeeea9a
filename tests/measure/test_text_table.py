"""format_table: numbers formatted and aligned, and tables held to the book's column."""

from __future__ import annotations

import pytest

from modularforge.measure.text_table import TABLE_WIDTH, fit_widths, format_table

LONG = "a text cell long enough that the table cannot stay on one line per row"


def test_a_narrow_table_keeps_one_line_per_row() -> None:
    text = format_table(
        [{"name": "a", "n": 1234567, "x": 1.25}, {"name": "bb", "n": 5, "x": None}],
        decimals={"x": 2},
    )
    lines = text.splitlines()
    assert lines[0].split() == ["name", "n", "x"]
    assert set(lines[1]) == {"-", " "}
    assert lines[2].split() == ["a", "1,234,567", "1.25"]
    assert lines[3].rstrip().endswith("5") and len(lines) == 4


def test_no_negative_zero() -> None:
    assert format_table([{"v": -0.01}]).splitlines()[2].strip() == "0.0"


def test_a_wide_table_wraps_its_text_cells_and_fits() -> None:
    rows = [{"arm": "expert", "changes": LONG, "peak MB": 3038.3, "ratio": 1.0}] * 2
    text = format_table(rows)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= TABLE_WIDTH
    # Each row starts with its first cell; continuation lines leave that column empty.
    starts = [line for line in lines[2:] if line.startswith("expert")]
    assert len(starts) == 2 and len(lines) > 4
    assert all(line.startswith(" ") for line in lines[2:] if not line.startswith("expert"))
    # Every word of the text cell survives the wrapping, in order.
    first_row = lines[2 : 2 + (len(lines) - 2) // 2]
    column = lines[1].split("  ").index("-" * len(lines[1].split("  ")[1]))
    assert column == 1
    words = " ".join(line[8:].split("  ")[0].strip() for line in first_row).split()
    assert words == LONG.split()
    # Numbers are never wrapped.
    assert "3,038.3" in lines[2]


def test_a_table_whose_words_cannot_fit_stays_wider_than_the_column() -> None:
    """The negative case: no wrapping can fit it, and the width shows it (the browser test fails)."""
    rows = [{f"column{i}": "x" * 12 for i in range(8)}]
    assert max(len(line) for line in format_table(rows).splitlines()) > TABLE_WIDTH


def test_fit_widths_narrows_the_widest_wrappable_column_first() -> None:
    assert fit_widths([10, 60, 10], [10, 5, 10], width=50) == [10, 26, 10]
    assert fit_widths([10, 20], [10, 20], width=10) == [10, 20]


def test_an_empty_table_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one row"):
        format_table([])


def test_the_first_column_wraps_last_with_a_hanging_indent() -> None:
    label = "a row label far too long to leave room for the numbers beside it in the column"
    rows = [{"reading": label, "params": 12_596_224, "off by %": -30.0}, {"reading": "short"}]
    lines = format_table(rows).splitlines()
    assert max(len(line) for line in lines) <= TABLE_WIDTH
    body = lines[lines.index(next(x for x in lines if x.startswith("---"))) + 1 :]
    assert body[0].startswith("a row label") and "12,596,224" in body[0]
    continuation = [line for line in body[1:] if not line.startswith("short")]
    assert continuation and all(line.startswith("  ") for line in continuation)
    first_width = len(next(x for x in lines if x.startswith("---")).split()[0])
    assert " ".join(line[:first_width] for line in body[:-1]).split() == label.split()

"""The README's chapter table: every chapter in reading order, each with its measured time.

The README promises a reader that every chapter runs in under two minutes and lists
the measured times; these tests keep that table in step with _toc.yml and hold
every listed time to the goal. (They read the table; they do not time anything.)
"""

from __future__ import annotations

import re
from pathlib import Path

from book_toc import toc_files

REPO_ROOT = Path(__file__).resolve().parents[2]
GOAL_S = 120
ROW = re.compile(r"^\|[^|]*\|[^|]*\| `(?P<file>[\w.]+)` \| *(?:(?P<seconds>\d+) s)? *\|$", re.M)


def chapter_rows(readme: str) -> list[tuple[str, int | None]]:
    """(file, seconds or None) for each row of the chapter table, in order."""
    return [(m["file"], int(m["seconds"]) if m["seconds"] else None) for m in ROW.finditer(readme)]


def test_the_table_lists_the_toc_chapters_in_reading_order() -> None:
    listed = [Path(file).stem for file, _ in chapter_rows((REPO_ROOT / "README.md").read_text())]
    chapters = [Path(f).name for f in toc_files() if f not in {"book/intro", "book/references"}]
    assert listed == chapters


def test_every_notebook_has_a_time_within_the_goal() -> None:
    rows = chapter_rows((REPO_ROOT / "README.md").read_text())
    notebooks = [(file, seconds) for file, seconds in rows if file.endswith(".ipynb")]
    assert notebooks and all(seconds is not None for _, seconds in notebooks), notebooks
    assert [file for file, seconds in notebooks if seconds > GOAL_S] == []


def test_the_checks_can_fail() -> None:
    table = "| a | b | `x.ipynb` | 130 s |\n| | c | `y.md` | |\n"
    assert chapter_rows(table) == [("x.ipynb", 130), ("y.md", None)]
    assert [f for f, s in chapter_rows(table) if s is not None and s > GOAL_S] == ["x.ipynb"]

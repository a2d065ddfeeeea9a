"""Every chapter opens with what you will learn and closes with what you now know.

A learner reads a chapter's promise before its first result and its summary after
the last one. The promise is a "What you will learn" heading in the chapter's first
half; the close is a "you now know" passage among its last cells (a Markdown cell, or
a paragraph a code cell displays with its numbers filled in).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from book_toc import toc_files

REPO_ROOT = Path(__file__).resolve().parents[2]
CHAPTERS = [f for f in toc_files() if f not in {"book/intro", "book/references"}]
#: How many of the last text blocks may hold the close (exercises often come after it).
CLOSING_WINDOW = 4


def text_blocks(file: str) -> list[str]:
    """A chapter's prose in reading order: Markdown cells and the Markdown code displays."""
    notebook = REPO_ROOT / f"{file}.ipynb"
    if not notebook.exists():
        return (REPO_ROOT / f"{file}.md").read_text(encoding="utf-8").split("\n## ")
    blocks = []
    for cell in json.loads(notebook.read_text(encoding="utf-8"))["cells"]:
        if cell["cell_type"] == "markdown":
            blocks.append("".join(cell["source"]))
        for output in cell.get("outputs", []):
            markdown = output.get("data", {}).get("text/markdown")
            if markdown:
                blocks.append("".join(markdown))
    return blocks


def frame_problems(blocks: list[str]) -> list[str]:
    """What is missing from a chapter's frame: the opening promise, the closing summary."""
    problems = []
    first_half = "\n".join(blocks[: max(1, len(blocks) // 2)])
    if "What you will learn" not in first_half:
        problems.append("no 'What you will learn' in its first half")
    if not any("now know" in block.lower() for block in blocks[-CLOSING_WINDOW:]):
        problems.append(f"no 'you now know' in its last {CLOSING_WINDOW} text blocks")
    return problems


@pytest.mark.parametrize("file", CHAPTERS)
def test_the_chapter_opens_with_a_promise_and_closes_with_a_summary(file: str) -> None:
    assert not frame_problems(text_blocks(file)), (file, frame_problems(text_blocks(file)))


def test_negative_control_a_chapter_without_its_frame_fails() -> None:
    framed = ["# Title", "## What you will learn\n- x", "body", "body", "## What you now know"]
    assert frame_problems(framed) == []
    assert frame_problems(["# Title", "body", "body", "## What you now know"]) == [
        "no 'What you will learn' in its first half"
    ]
    late_close = [*framed[:-1], "## What you now know", *["## Exercises"] * CLOSING_WINDOW]
    assert frame_problems(late_close) == [
        f"no 'you now know' in its last {CLOSING_WINDOW} text blocks"
    ]


def chapter_number(file: str) -> str:
    """The number a chapter's file name gives it: book/06b_making... -> '6b'."""
    stem = file.removeprefix("book/").split("_", 1)[0]
    return stem.lstrip("0") if stem.lstrip("0")[:1].isdigit() else "0" + stem.lstrip("0")


def title_number_problem(file: str, title: str) -> str | None:
    """None when the title starts with the chapter's number ("# 6b. ..."), else what is wrong."""
    want = f"# {chapter_number(file)}. "
    return None if title.startswith(want) else f"title {title!r} does not start with {want!r}"


@pytest.mark.parametrize("file", CHAPTERS)
def test_the_title_carries_the_chapter_number_the_prose_uses(file: str) -> None:
    """The sidebar shows titles, and the prose says "chapter 6b": the two must agree."""
    title = text_blocks(file)[0].splitlines()[0]
    assert title_number_problem(file, title) is None, title_number_problem(file, title)


def test_negative_control_a_title_without_its_number_fails() -> None:
    assert title_number_problem("book/06b_making_205_mb_real", "# 6b. Making 205 MB real") is None
    assert title_number_problem("book/00_quickstart", "# 0. Quickstart") is None
    assert title_number_problem("book/06b_making_205_mb_real", "# Making 205 MB real")
    assert title_number_problem("book/06b_making_205_mb_real", "# 6. Making 205 MB real")


def shown_prose(cells: list[dict]) -> list[int]:
    """Code cells that only display prose (`prose(...)`) but would show their source too."""
    return [
        i
        for i, cell in enumerate(cells)
        if cell["cell_type"] == "code"
        and "".join(cell["source"]).lstrip().startswith("prose(")
        and "remove-input" not in cell.get("metadata", {}).get("tags", [])
    ]


def shown_prose_cells(file: str) -> list[int]:
    notebook = REPO_ROOT / f"{file}.ipynb"
    if not notebook.exists():
        return []
    return shown_prose(json.loads(notebook.read_text(encoding="utf-8"))["cells"])


@pytest.mark.parametrize("file", CHAPTERS)
def test_a_prose_cell_shows_its_text_not_its_template(file: str) -> None:
    """The reader sees the paragraph with its numbers; the template with {braces} stays hidden."""
    assert shown_prose_cells(file) == [], (file, shown_prose_cells(file))


def test_negative_control_an_untagged_prose_cell_is_caught() -> None:
    hidden = {
        "cell_type": "code",
        "source": ["prose(r'{x}')"],
        "metadata": {"tags": ["remove-input"]},
    }
    shown = {"cell_type": "code", "source": ["prose(r'{x}')"], "metadata": {}}
    assert shown_prose([hidden, shown]) == [1]

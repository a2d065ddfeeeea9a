"""Nothing a reader sees names the project's issue tracker.

A reader of the book, the README or the package has no access to the tracker,
so "issue 15's goal" or "(issue 12, part B)" tells them nothing; the text should
say what the goal or the part is. Scanned: modularforge/**/*.py, book/**/*.md,
README.md, and every book/**/*.ipynb, its cell sources and its stored outputs
(the book shows those as they are stored).

Mentions still in a notebook wait for whoever re-executes the chapters (the
notebooks are edited and re-run together); `PENDING_IN_NOTEBOOKS` lists them, so
the check still runs: a new mention fails, and so does a listed one once it is
gone (take it off the list).
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
#: "issue 15", "Issue #3", "issues 11 and 12", "(issue 12, part B)", "issue-7",
#: "ticket 4", "GH-12": a tracker's word followed by a number.
TRACKER_NAME = re.compile(r"\b(?:issues?|tickets?)[ \t\-]*#?[ \t]*\d+|\bGH-\d+", re.IGNORECASE)
#: Output data stored as base64 (not text): never scanned, it only looks like words.
BINARY_MIME = re.compile(r"^image/(?!svg)|^application/pdf$")
SKIPPED_DIRS = {".ipynb_checkpoints", "_extra", "_build"}
#: (notebook, the text found) still waiting for the chapters' next re-execution.
PENDING_IN_NOTEBOOKS: set[tuple[str, str]] = set()


def tracker_names(text: str) -> list[str]:
    """Every tracker reference in `text`, as written."""
    return [match.group(0) for match in TRACKER_NAME.finditer(text)]


def text_files(root: Path) -> list[Path]:
    """The package's sources, the book's pages and the README, under `root`."""
    files = [*root.glob("modularforge/**/*.py"), *root.glob("book/**/*.md"), root / "README.md"]
    return sorted(
        p for p in files if p.is_file() and not SKIPPED_DIRS & set(p.relative_to(root).parts)
    )


def notebooks(root: Path) -> list[Path]:
    return sorted(
        p for p in root.glob("book/**/*.ipynb") if not SKIPPED_DIRS & set(p.relative_to(root).parts)
    )


def _text(value: Any) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


def notebook_texts(path: Path) -> Iterator[tuple[str, str]]:
    """(where, text) for each cell's source and each of its stored outputs' text."""
    for index, cell in enumerate(json.loads(path.read_text(encoding="utf-8"))["cells"]):
        yield f"cell {index} source", _text(cell.get("source", ""))
        for number, output in enumerate(cell.get("outputs", [])):
            where = f"cell {index} output {number}"
            if "text" in output:  # stream
                yield where, _text(output["text"])
            if "traceback" in output:  # error
                yield where, "\n".join(output["traceback"])
            for mime, value in output.get("data", {}).items():  # display_data, execute_result
                if not BINARY_MIME.search(mime):
                    text = value if isinstance(value, (str, list)) else json.dumps(value)
                    yield f"{where} {mime}", _text(text)


def mentions_in_files(root: Path) -> list[str]:
    return [
        f"{path.relative_to(root).as_posix()}: {name!r}"
        for path in text_files(root)
        for name in tracker_names(path.read_text(encoding="utf-8"))
    ]


def mentions_in_notebooks(root: Path) -> list[tuple[str, str, str]]:
    """(notebook, where, text found) for every tracker reference in the notebooks."""
    return [
        (path.relative_to(root).as_posix(), where, name)
        for path in notebooks(root)
        for where, text in notebook_texts(path)
        for name in tracker_names(text)
    ]


# --- the repository ------------------------------------------------------------------------


def test_the_package_the_book_pages_and_the_readme_name_no_tracker() -> None:
    assert len(text_files(REPO_ROOT)) > 80  # the scan is real: it reads the whole package
    assert mentions_in_files(REPO_ROOT) == []


def test_the_notebooks_name_no_tracker_beyond_those_pending() -> None:
    assert len(notebooks(REPO_ROOT)) >= 10
    found = mentions_in_notebooks(REPO_ROOT)
    new = [m for m in found if (m[0], m[2]) not in PENDING_IN_NOTEBOOKS]
    fixed = PENDING_IN_NOTEBOOKS - {(m[0], m[2]) for m in found}
    assert new == [], f"tracker named in a notebook: {new}; say what it refers to instead"
    assert fixed == set(), f"no longer in the notebooks, take off PENDING_IN_NOTEBOOKS: {fixed}"
    if found:
        warnings.warn(f"tracker still named in notebooks (pending): {found}", stacklevel=1)


# --- negative controls: the detector and the scan can fail ---------------------------------


def test_the_detector_flags_each_way_of_naming_the_tracker() -> None:
    planted = {
        "MFU_GOAL = 0.75  # issue 15's goal": ["issue 15"],
        "the catalogue (issue 12, part B)": ["issue 12"],
        "see Issue #3 and issues 11 and 12": ["Issue #3", "issues 11"],
        "fixed in issue-7, ticket 4 and GH-9": ["issue-7", "ticket 4", "GH-9"],
    }
    for text, expected in planted.items():
        assert tracker_names(text) == expected, text


def test_the_detector_leaves_ordinary_words_alone() -> None:
    for text in (
        "an issue with the tokenizer",
        "the issues 'torch.load' raises",
        "tissue 3",
        "issued 3 warnings",
        "layer 12's attention",
    ):
        assert tracker_names(text) == [], text


def test_the_scan_finds_a_planted_mention_in_every_kind_of_file(tmp_path: Path) -> None:
    for rel in ("modularforge/files/a.py", "book/intro.md", "README.md"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("clean text\n", encoding="utf-8")
    (tmp_path / "book/_extra").mkdir()
    (tmp_path / "book/_extra/vendored.md").write_text("issue 1 (vendored)\n", encoding="utf-8")
    assert mentions_in_files(tmp_path) == []
    for rel in ("modularforge/files/a.py", "book/intro.md", "README.md"):
        (tmp_path / rel).write_text("MFU_GOAL = 0.75  # issue 15's goal\n", encoding="utf-8")
    assert mentions_in_files(tmp_path) == [
        "README.md: 'issue 15'",
        "book/intro.md: 'issue 15'",
        "modularforge/files/a.py: 'issue 15'",
    ]


def test_the_scan_reads_notebook_sources_and_stored_outputs(tmp_path: Path) -> None:
    notebook = {
        "cells": [
            {"cell_type": "markdown", "source": ["As (issue 12, part B) says"]},
            {
                "cell_type": "code",
                "source": ["x = 1\n", "print(x)"],
                "outputs": [
                    {"output_type": "stream", "name": "stdout", "text": ["see issue #3\n"]},
                    {
                        "output_type": "execute_result",
                        "data": {
                            "text/plain": ["'issues 11'"],
                            "text/html": "<b>ticket 4</b>",
                            "image/png": "iVBORw0+issue15/AAA=",  # base64, not text
                        },
                    },
                    {"output_type": "error", "traceback": ["ValueError: GH-9"]},
                ],
            },
        ]
    }
    (tmp_path / "book").mkdir()
    (tmp_path / "book/ch.ipynb").write_text(json.dumps(notebook), encoding="utf-8")
    assert mentions_in_notebooks(tmp_path) == [
        ("book/ch.ipynb", "cell 0 source", "issue 12"),
        ("book/ch.ipynb", "cell 1 output 0", "issue #3"),
        ("book/ch.ipynb", "cell 1 output 1 text/plain", "issues 11"),
        ("book/ch.ipynb", "cell 1 output 1 text/html", "ticket 4"),
        ("book/ch.ipynb", "cell 1 output 2", "GH-9"),
    ]

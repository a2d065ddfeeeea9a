"""Every chapter reads fully in plain Jupyter and Colab, not only in Jupyter Book.

Colab and plain Jupyter render Markdown cells as CommonMark: a MyST role or
directive (``{glue:text}``, ``{literalinclude}``, ``{cite}``, an admonition
fence) shows there as raw markup, and the number or code it stood for is
missing. So the chapters put numbers in prose with `prose`, show package code
with `show_code`, and write citations as links. These tests export every stored
notebook with plain nbconvert and refuse raw MyST, and run chapter 1 in a kernel
where myst-nb cannot even be imported, checking that every paragraph and every
code listing shows.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((REPO_ROOT / "book").glob("*.ipynb"))

RAW_MYST = {
    "glue role": re.compile(r"\{glue(?::\w+)?\}`"),
    "literalinclude": re.compile(r"\{literalinclude\}"),
    "citation role": re.compile(r"\{cite(?::\w+)?\}`"),
    "glossary term": re.compile(r"\{term\}`"),
    "cross-reference": re.compile(r"\{(?:ref|doc|numref)\}`"),
    "directive fence": re.compile(r"(?m)^\s*(?:`{3,}|~{3,})\{[\w-]+\}"),
    "colon fence": re.compile(r"(?m)^\s*:{3,}"),
    "target label": re.compile(r"(?m)^\([\w-]+\)=\s*$"),
}


def raw_myst(text: str) -> list[str]:
    """The kinds of MyST markup that `text` shows raw outside Jupyter Book."""
    return [name for name, pattern in RAW_MYST.items() if pattern.search(text)]


@pytest.mark.parametrize(
    "planted",
    [
        "see {glue:text}`n_calls` calls",
        "```{literalinclude} ../x.py\n```",
        "as in {cite}`fedus2022switch`",
        "a {term}`trunk`",
        "{ref}`the next section <label>`",
        "````{admonition} The design document says\ntext\n````",
        ":::{note}\ntext\n:::",
        "(making-205-mb-real)=\n## Heading",
    ],
)
def test_negative_control_the_detector_sees_each_kind(planted: str) -> None:
    assert raw_myst(planted)


def test_plain_markdown_is_not_flagged() -> None:
    assert raw_myst("A [link](https://arxiv.org/abs/1) and ```python\ncode\n``` and {a: 1}") == []


def exported(notebook: Path) -> str:
    from nbconvert import MarkdownExporter

    body, _ = MarkdownExporter().from_filename(str(notebook))
    return body


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_a_plain_nbconvert_export_shows_no_raw_myst(notebook: Path) -> None:
    assert raw_myst(exported(notebook)) == []


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_no_value_is_hidden_in_a_jupyter_book_only_record(notebook: Path) -> None:
    """A myst-nb glue record shows nothing outside Jupyter Book."""
    assert "application/papermill.record" not in notebook.read_text(encoding="utf-8")


def test_chapter_1_runs_and_shows_everything_without_myst_nb(tmp_path: Path) -> None:
    blocker = tmp_path / "no_myst"
    blocker.mkdir()
    (blocker / "myst_nb.py").write_text("raise ImportError('myst_nb is not installed here')\n")
    stored = REPO_ROOT / "book" / "01_architecture.ipynb"
    out = tmp_path / "ch01.ipynb"
    env = {**os.environ, "PYTHONPATH": f"{blocker}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    subprocess.run(
        [sys.executable, "-m", "jupyter", "execute", f"--output={out}", str(stored)],
        cwd=stored.parent, env=env, check=True, capture_output=True,
    )  # fmt: skip
    fresh = json.loads(out.read_text(encoding="utf-8"))
    old = json.loads(stored.read_text(encoding="utf-8"))
    prose_cells = code_listings = 0
    for new_cell, old_cell in zip(fresh["cells"], old["cells"], strict=True):
        source = "".join(new_cell["source"])
        if new_cell["cell_type"] != "code":
            continue
        if source.lstrip().startswith("prose("):
            prose_cells += 1
            (shown,) = [o["data"]["text/markdown"] for o in new_cell["outputs"]]
            (was,) = [o["data"]["text/markdown"] for o in old_cell["outputs"]]
            assert shown == was  # every number reached the reader, as in the book
        if "show_code(" in source:
            code_listings += 1
            (html,) = [o["data"]["text/html"] for o in new_cell["outputs"]]
            assert "def" in html or "class" in html
    assert prose_cells >= 3 and code_listings >= 3

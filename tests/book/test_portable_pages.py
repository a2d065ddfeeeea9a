"""Every chapter reads fully outside Jupyter Book: in plain Jupyter, JupyterLab and Colab.

MyST roles and directives (a glue role, a literalinclude, a citation, an
admonition) only render inside Jupyter Book; anywhere else a reader sees the raw
markup and misses the number or the code it stood for. These tests read the
notebooks the way a plain front end does:

- every stored notebook is exported with plain nbconvert (no Jupyter Book, no
  myst-nb), and the export may hold no MyST markup;
- no stored output is a myst-nb glue record (which only Jupyter Book can show);
- chapter 1 is executed in a kernel where myst-nb cannot be imported, and every
  paragraph and code listing that a cell builds must show.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import nbformat
import pytest
from nbconvert import MarkdownExporter

REPO_ROOT = Path(__file__).resolve().parents[2]
BOOK_DIR = REPO_ROOT / "book"
NOTEBOOKS = sorted(p for p in BOOK_DIR.glob("*.ipynb"))

#: Markup that only Jupyter Book renders (MyST roles, directives, targets).
RAW_MYST = re.compile(
    r"\{(?:glue|cite|term|ref|doc|numref|eq|literalinclude|admonition|note|warning|figure)"
    r"[:}]|^:::|^```+\{|^\([A-Za-z0-9_-]+\)=\s*$",
    re.M,
)


def raw_myst(text: str) -> list[str]:
    """The lines of `text` that carry MyST-only markup."""
    return [line for line in text.splitlines() if RAW_MYST.search(line)]


def plain_export(notebook: nbformat.NotebookNode) -> str:
    """The notebook as Markdown, with its stored outputs, as plain nbconvert writes it."""
    body, _ = MarkdownExporter().from_notebook_node(notebook)
    return body


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_plain_export_has_no_myst_markup(path: Path) -> None:
    found = raw_myst(plain_export(nbformat.read(path, as_version=4)))
    assert found == [], f"{path.name} shows raw MyST outside Jupyter Book: {found[:5]}"


def test_the_markup_check_can_fail() -> None:
    notebook = nbformat.v4.new_notebook()
    for text in (
        "The trunk takes {glue:text}`shared_mb`.",
        "As DEMix shows {cite}`gururangan2022demix`.",
        "```{literalinclude} ../modularforge/model/shared.py\n:pyobject: SharedComponents\n```",
        ":::{note}\nA note.\n:::",
        "(a-label)=\n## A heading",
    ):
        notebook.cells = [nbformat.v4.new_markdown_cell(text)]
        assert raw_myst(plain_export(notebook)), text
    notebook.cells = [nbformat.v4.new_markdown_cell("A set {1, 2} and a dict {'a': 1}.")]
    assert raw_myst(plain_export(notebook)) == []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_no_output_is_a_glue_record(path: Path) -> None:
    """A myst-nb glue record displays nothing outside Jupyter Book."""
    records = [
        i
        for i, cell in enumerate(json.loads(path.read_text(encoding="utf-8"))["cells"])
        for output in cell.get("outputs", [])
        if any(key.startswith("application/papermill.record") for key in output.get("data", {}))
    ]
    assert records == [], f"{path.name}: cells {records} store myst-nb glue records"


BLOCK_MYST_NB = "raise ImportError('myst_nb is not installed in this kernel (as in Colab)')\n"


@pytest.fixture(scope="module")
def chapter_one_without_myst_nb(tmp_path_factory: pytest.TempPathFactory):
    """Chapter 1, executed top to bottom in a kernel that cannot import myst-nb."""
    from nbclient import NotebookClient

    blocker = tmp_path_factory.mktemp("no-myst-nb")
    (blocker / "myst_nb.py").write_text(BLOCK_MYST_NB)
    notebook = nbformat.read(BOOK_DIR / "01_architecture.ipynb", as_version=4)
    with pytest.MonkeyPatch.context() as patch:  # the kernel inherits this environment
        patch.setenv("PYTHONPATH", str(blocker), prepend=os.pathsep)
        NotebookClient(
            notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": BOOK_DIR}}
        ).execute()
    return notebook


def _shown_markdown(cell) -> str:
    return "".join(
        output.get("data", {}).get("text/markdown", "")
        for output in cell.get("outputs", [])
        if output.get("output_type") in {"display_data", "execute_result"}
    )


def test_every_paragraph_and_listing_shows_without_myst_nb(chapter_one_without_myst_nb) -> None:
    notebook = chapter_one_without_myst_nb
    blocked = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.get("output_type") == "error"
    ]
    assert blocked == [], f"chapter 1 failed without myst-nb: {blocked[0].get('evalue')}"
    builders = [
        cell
        for cell in notebook.cells
        if cell.cell_type == "code" and re.search(r"^(prose|show_code)\(", cell.source, re.M)
    ]
    assert len(builders) >= 5, "chapter 1 should build its prose and listings in cells"
    for cell in builders:
        shown = _shown_markdown(cell)
        assert shown.strip(), f"nothing shows for:\n{cell.source[:200]}"
        assert raw_myst(shown) == [], shown[:300]
        if "show_code(" in cell.source:
            assert shown.startswith("```python\n") and re.search(r"^(def|class) ", shown, re.M)


def test_the_kernel_really_had_no_myst_nb(tmp_path: Path) -> None:
    """Negative control for the fixture: the blocker makes `import myst_nb` fail."""
    import subprocess

    (tmp_path / "myst_nb.py").write_text(BLOCK_MYST_NB)
    result = subprocess.run(
        [sys.executable, "-c", "import myst_nb"],
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0 and "myst_nb is not installed" in result.stderr

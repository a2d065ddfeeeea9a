"""The notebooks in book/ are stored with outputs, and _toc.yml lists exactly them.

Why this exists: nbval compares each cell's fresh output with the stored one,
so a notebook saved *without* outputs passes nbval silently, and the book
(built with execution off) would show no results. These checks make that
impossible, and pin the conventions every chapter notebook follows:

- every code cell with source has stored outputs, except the Colab setup cell,
  which does nothing outside Colab;
- the first code cell is the Colab setup cell (it mentions ``google.colab`` and
  runs ``pip install``);
- no cell's code carries an nbval marker comment (``# NBVAL_IGNORE_OUTPUT``): the
  reader sees the code, so a cell whose output is not compared says so with the
  ``nbval-ignore-output`` tag instead, and a comment in it tells the reader why;
- no cell stores an error output;
- the notebook files in book/ and the notebooks in _toc.yml are the same set.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any

import pytest
from book_toc import toc_files
from repo_scripts import load_script

REPO_ROOT = Path(__file__).resolve().parents[2]
BOOK_DIR = REPO_ROOT / "book"
NBVAL_MARKERS = {
    "NBVAL_IGNORE_OUTPUT",
    "NBVAL_CHECK_OUTPUT",
    "NBVAL_RAISES_EXCEPTION",
    "NBVAL_SKIP",
    "PYTEST_VALIDATE_IGNORE_OUTPUT",
}


def resolve(entry: str) -> Path | None:
    base = REPO_ROOT / entry
    for path in [base] if base.suffix else [base.with_suffix(".ipynb"), base.with_suffix(".md")]:
        if path.is_file():
            return path
    return None


def book_notebooks() -> list[Path]:
    return sorted(
        p
        for p in BOOK_DIR.rglob("*.ipynb")
        if ".ipynb_checkpoints" not in p.parts and "_build" not in p.parts
    )


NOTEBOOKS = book_notebooks()


def code_cells(nb: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    return [(i, c) for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"]


def source(cell: dict[str, Any]) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def is_colab_setup(cell: dict[str, Any]) -> bool:
    src = source(cell)
    return "google.colab" in src and ("pip install" in src or '"pip", "install"' in src)


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


# --- The table of contents and the files agree ------------------------------


def test_toc_root_is_the_introduction() -> None:
    assert toc_files()[0] == "book/intro"
    assert (BOOK_DIR / "intro.md").is_file()


def test_every_toc_entry_exists() -> None:
    missing = [e for e in toc_files() if resolve(e) is None]
    assert not missing, f"_toc.yml lists files that don't exist: {missing}"


def test_toc_has_no_duplicates() -> None:
    entries = toc_files()
    assert len(entries) == len(set(entries)), "_toc.yml lists a page twice"


def test_toc_lists_every_notebook_and_only_existing_ones() -> None:
    in_toc = {resolve(e) for e in toc_files()}
    toc_notebooks = {p for p in in_toc if p is not None and p.suffix == ".ipynb"}
    on_disk = set(NOTEBOOKS)
    assert on_disk - toc_notebooks == set(), (
        f"notebooks missing from _toc.yml: {sorted(str(p) for p in on_disk - toc_notebooks)}"
    )
    assert toc_notebooks - on_disk == set(), (
        f"_toc.yml notebooks outside book/: {sorted(str(p) for p in toc_notebooks - on_disk)}"
    )


# --- Each notebook ---------------------------------------------------------


@pytest.mark.parametrize(
    "path", NOTEBOOKS, ids=[p.relative_to(BOOK_DIR).as_posix() for p in NOTEBOOKS]
)
class TestNotebook:
    def test_first_code_cell_is_colab_setup(self, path: Path) -> None:
        cells = code_cells(load(path))
        assert cells, f"{path.name} has no code cells"
        first = source(cells[0][1])
        assert is_colab_setup(cells[0][1]), (
            f"{path.name}: the first code cell must be the Colab setup cell "
            f"(mention google.colab and run pip install); it is:\n{first}"
        )

    def test_every_code_cell_has_stored_outputs(self, path: Path) -> None:
        empty = []
        for n, (i, cell) in enumerate(code_cells(load(path))):
            if not source(cell).strip() or (n == 0 and is_colab_setup(cell)):
                continue
            if only_hands_values_to_prose(source(cell)):
                continue
            if not cell.get("outputs"):
                empty.append(f"cell {i}: {source(cell).splitlines()[0][:70]!r}")
        assert not empty, (
            f"{path.name} has code cells without stored outputs (run `make execute-notebooks`):\n"
            + "\n".join(empty)
        )

    def test_no_stored_errors(self, path: Path) -> None:
        errors = [
            f"cell {i}: {out.get('ename')}: {out.get('evalue')}"
            for i, cell in code_cells(load(path))
            for out in cell.get("outputs", [])
            if out.get("output_type") == "error"
        ]
        assert not errors, f"{path.name} stores error outputs:\n" + "\n".join(errors)

    def test_uncompared_outputs_are_tagged_and_explained(self, path: Path) -> None:
        problems = [
            f"cell {i}: {problem}"
            for i, cell in code_cells(load(path))
            for problem in marker_problems(cell)
        ]
        assert not problems, f"{path.name}:\n" + "\n".join(problems)


def marker_problems(cell: dict[str, Any]) -> list[str]:
    """What is wrong with how a code cell marks an output that nbval does not compare."""
    src = source(cell)
    comments = [
        ln.strip().lstrip("#").strip() for ln in src.splitlines() if ln.strip().startswith("#")
    ]
    problems = [
        f"`# {marker}` shows in the code on the page; use the cell tag "
        f"`{marker.lower().replace('_', '-')}` instead"
        for marker in sorted(NBVAL_MARKERS)
        if any(comment.startswith(marker) for comment in comments)
    ]
    if "nbval-ignore-output" in cell.get("metadata", {}).get("tags", []):
        if not any(len(comment.split()) >= 3 for comment in comments):
            problems.append("tagged nbval-ignore-output: add a comment telling the reader why")
    return problems


def test_marker_problems_catch_a_marker_and_an_unexplained_tag() -> None:
    def cell(src: str, tags: list[str]) -> dict[str, Any]:
        return {"cell_type": "code", "source": src, "metadata": {"tags": tags}}

    explained = "# Timings vary from run to run.\nrun()"
    assert marker_problems(cell(explained, ["nbval-ignore-output"])) == []
    # Negative controls: the marker in the code, and a tag with no reason.
    assert marker_problems(cell("# NBVAL_IGNORE_OUTPUT\n" + explained, []))
    assert marker_problems(cell("# NBVAL_SKIP\nrun()", []))
    assert marker_problems(cell("run()", ["nbval-ignore-output"]))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_no_execution_timestamps_are_stored(path: Path) -> None:
    """`make execute-notebooks` strips nbclient's per-cell timestamps
    (scripts/strip_execution_metadata.py), so a re-run's diff shows only real changes."""
    stamped = [i for i, cell in enumerate(load(path)["cells"]) if "execution" in cell["metadata"]]
    assert stamped == [], f"cells {stamped} carry execution timestamps"


def test_timestamp_stripper_removes_them(tmp_path: Path) -> None:
    """Negative control for the check above: a stamped notebook is caught, then cleaned."""
    module = load_script("scripts/strip_execution_metadata.py")
    nb = load(NOTEBOOKS[0])
    nb["cells"][0]["metadata"]["execution"] = {"iopub.status.idle": "2026-01-01T00:00:00Z"}
    path = tmp_path / "stamped.ipynb"
    path.write_text(json.dumps(nb))
    with pytest.raises(AssertionError, match="timestamps"):
        test_no_execution_timestamps_are_stored(path)
    assert module.strip(path) == 1
    test_no_execution_timestamps_are_stored(path)
    assert module.strip(path) == 0


def is_glue_call(node: ast.AST) -> bool:
    """True for a call of `glue(...)`."""
    return isinstance(node, ast.Call) and getattr(node.func, "id", "") == "glue"


def glues_only(src: str) -> bool:
    """True for a cell that does nothing but hand values to the prose (`glue(...)` calls)."""
    try:
        body = ast.parse(src).body
    except SyntaxError:  # IPython magics: not a bookkeeping cell
        return False
    return bool(body) and all(isinstance(s, ast.Expr) and is_glue_call(s.value) for s in body)


def only_hands_values_to_prose(src: str) -> bool:
    """True for a cell that computes values and glues them, and so rightly shows nothing.

    Every expression statement in it, at any depth, is a `glue(...)` call, and it
    calls nothing that prints or displays.
    """
    try:
        tree = ast.parse(src)
    except SyntaxError:
        return False
    statements = [node for node in ast.walk(tree) if isinstance(node, ast.Expr)]
    called = {
        getattr(node.func, "id", getattr(node.func, "attr", ""))
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
    }
    return (
        bool(statements)
        and all(is_glue_call(s.value) for s in statements)
        and not called & {"print", "display", "show", "prose", "show_code"}
    )


def test_the_quiet_cell_exemption_can_fail() -> None:
    assert only_hands_values_to_prose('x = 2\nglue("a", x)\nfor k in "ab":\n    glue(k, 1)\n')
    assert not only_hands_values_to_prose('glue("a", 1)\nprint("a")\n')
    assert not only_hands_values_to_prose('x = f(glue("a", 1), print("b"))\n')
    assert not only_hands_values_to_prose("x = 1\n")
    assert not only_hands_values_to_prose('glue("a", 1)\n1 + 1\n')


HIDDEN_INPUT = {"remove-input", "hide-input", "remove-cell"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_cells_that_only_glue_hide_their_code(path: Path) -> None:
    """Bookkeeping is not teaching: a glue-only cell's code is hidden on the page."""
    shown = [
        i
        for i, cell in code_cells(load(path))
        if glues_only(source(cell)) and not HIDDEN_INPUT & set(cell["metadata"].get("tags", []))
    ]
    assert shown == [], f"glue-only cells {shown} show their code; tag them remove-input"


def test_glue_only_check_can_fail() -> None:
    assert glues_only('glue("a", 1)\nglue("b", 2)\n')
    assert not glues_only('x = 1\nglue("a", x)\n')
    assert not glues_only("%timeit 1\n")


#: Comments for linters, formatters and test tools: they mean nothing to a reader.
TOOL_MARKER = re.compile(
    r"#\s*(?:noqa\b|fmt:\s*(?:skip|off|on)\b|type:\s*ignore\b|pragma\b|NBVAL_)"
)


def tool_markers(notebook: dict[str, Any]) -> list[str]:
    """Tool markers in the code cells and in the text they display (code listings)."""
    found = []
    for i, cell in code_cells(notebook):
        texts = [source(cell)]
        for output in cell.get("outputs", []):
            texts.append(source({"source": output.get("text", "")}))
            texts.append(source({"source": output.get("data", {}).get("text/markdown", "")}))
        found += [f"cell {i}: {m.group(0)!r}" for text in texts for m in TOOL_MARKER.finditer(text)]
    return found


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_no_tool_markers_reach_the_page(path: Path) -> None:
    assert not tool_markers(load(path)), f"{path.name}: {tool_markers(load(path))}"


def test_tool_markers_are_found_in_code_and_in_listings() -> None:
    listing = {"output_type": "display_data", "data": {"text/markdown": "x = 1  # noqa: E501\n"}}
    notebook = {
        "cells": [
            {"cell_type": "code", "source": "f(  # fmt: skip\n)", "outputs": []},
            {"cell_type": "code", "source": "show_code(f)", "outputs": [listing]},
            {"cell_type": "code", "source": "# a comment about the format: fine", "outputs": []},
        ]
    }
    assert [m.split(":")[0] for m in tool_markers(notebook)] == ["cell 0", "cell 1"]

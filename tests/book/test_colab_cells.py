"""Every chapter opens with the same Colab cell, built from the URL in _config.yml."""

import json

import pytest
from repo_scripts import load_script

sync_colab_cells = load_script("scripts/sync_colab_cells.py")

NOTEBOOKS = sync_colab_cells.notebooks()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_first_code_cell_is_the_synced_colab_cell(path):
    cell = sync_colab_cells.first_code_cell(json.loads(path.read_text("utf-8")))
    source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
    assert source == sync_colab_cells.colab_cell_source(), (
        f"{path.name}: run `python scripts/sync_colab_cells.py`"
    )
    assert cell["outputs"] == []  # outside Colab it does nothing
    assert sync_colab_cells.TAG in cell["metadata"].get("tags", [])  # hidden on the page


def test_colab_cell_fails_loudly_and_refreshes_a_rerun():
    source = sync_colab_cells.colab_cell_source("https://example.org/fork")
    assert "check=False" not in source
    assert source.count("check=True)") == 3  # pull, clone, install
    assert '"pull", "--ff-only"' in source
    assert '"-e", CLONE' in source  # editable: data/ and book/data/ stay reachable


def test_sync_rewrites_a_drifted_cell(tmp_path):
    notebook = {
        "cells": [
            {"cell_type": "markdown", "source": "# T", "metadata": {}},
            {
                "cell_type": "code",
                "source": "old",
                "outputs": [],
                "metadata": {},
                "execution_count": 1,
            },
        ],
        "metadata": {},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path = tmp_path / "x.ipynb"
    path.write_text(json.dumps(notebook))
    source = sync_colab_cells.colab_cell_source("https://example.org/fork")
    assert sync_colab_cells.sync(path, source) is True
    assert sync_colab_cells.sync(path, source) is False
    cell = json.loads(path.read_text())["cells"][1]
    assert "https://example.org/fork" in cell["source"]
    assert cell["metadata"]["tags"] == [sync_colab_cells.TAG]

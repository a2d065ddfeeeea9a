"""Trained numbers: every tolerant cell names a measured tolerance and tells the reader.

The tolerances in book/data/cpu-spread.json come from `make cpu-spread`, which
reruns the training chapters under other CPU kernels and thread counts. These
checks keep the notebooks, the file and the printed notes consistent.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modularforge.measure.reproducibility import (
    SPREAD_FILE,
    landing_note,
    load_spread,
    tolerance_from_spread,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((REPO_ROOT / "book").glob("*.ipynb"))


def tolerant_cells() -> list[tuple[str, int, dict]]:
    found = []
    for path in NOTEBOOKS:
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        for index, cell in enumerate(cells):
            if cell["cell_type"] == "code" and "cpu_tolerance" in cell.get("metadata", {}):
                found.append((path.name, index, cell))
    return found


CELLS = tolerant_cells()


def stored_text(cell: dict) -> str:
    parts = []
    for output in cell.get("outputs", []):
        text = output.get("text") or output.get("data", {}).get("text/plain", "")
        parts.append("".join(text) if isinstance(text, list) else text)
    return "".join(parts)


def test_the_training_chapters_have_tolerant_cells() -> None:
    names = {name for name, _, _ in CELLS}
    assert {"03_forward_interleaving.ipynb", "08_assembling_the_mixture.ipynb"} <= names


@pytest.mark.parametrize(("name", "index", "cell"), CELLS, ids=[f"{n}:{i}" for n, i, _ in CELLS])
def test_each_tolerant_cell_names_a_measured_key(name: str, index: int, cell: dict) -> None:
    spec = cell["metadata"]["cpu_tolerance"]
    keys = load_spread()
    assert spec["key"] in keys, f"{name} cell {index}: run `make cpu-spread`"
    assert keys[spec["key"]]["scale"] == spec["scale"]
    assert any(name in cell_name for cell_name in keys[spec["key"]]["per_cell"])


@pytest.mark.parametrize(("name", "index", "cell"), CELLS, ids=[f"{n}:{i}" for n, i, _ in CELLS])
def test_a_visible_training_cell_says_how_close_a_reader_lands(
    name: str, index: int, cell: dict
) -> None:
    if "remove-input" in cell["metadata"].get("tags", []):
        pytest.skip("a hidden cell that only hands values to the prose")
    key = cell["metadata"]["cpu_tolerance"]["key"]
    note = landing_note(key).split(" within ")[1].split(" of these")[0]  # "±0.12 nats"
    assert "land within" in stored_text(cell) and note.split()[0] in stored_text(cell)


def test_each_tolerance_is_the_margin_times_the_measured_spread() -> None:
    data = json.loads(SPREAD_FILE.read_text(encoding="utf-8"))
    assert not data["problems"], data["problems"]
    configs = data["configs"]
    capabilities = {env.get("ATEN_CPU_CAPABILITY") for env in configs.values()}
    threads = {env.get("MODULARFORGE_NUM_THREADS") for env in configs.values()}
    assert {"default", "avx2"} <= capabilities and {"1", "2"} <= threads
    for key, entry in data["keys"].items():
        assert set(entry["per_config"]) == set(configs), key
        assert entry["max_spread"] == max(entry["per_config"].values())
        expected = tolerance_from_spread(entry["max_spread"], entry["scale"]).value
        assert entry["tolerance"] == expected, key


def prose_keys() -> set[str]:
    """The tolerance keys that `prose` recorded for the numbers of its paragraphs."""
    found: set[str] = set()
    for path in NOTEBOOKS:
        for cell in json.loads(path.read_text(encoding="utf-8"))["cells"]:
            for output in cell.get("outputs", []):
                found |= {k for k in output.get("metadata", {}).get("cpu_tolerance", []) if k}
    return found


def test_no_key_is_measured_but_unused() -> None:
    used = {cell["metadata"]["cpu_tolerance"]["key"] for _, _, cell in CELLS} | prose_keys()
    assert set(load_spread()) == used


def test_some_paragraph_carries_trained_numbers() -> None:
    """The prose keys are really read (a paragraph of chapter 3 quotes its trained losses)."""
    assert "ch03-perplexity" in prose_keys()

"""`measure_cpu_spread.py --merge`: re-measuring one notebook keeps the others' tolerances."""

from __future__ import annotations

from repo_scripts import load_script

spread = load_script("scripts/measure_cpu_spread.py")


def record(*cells: str, tolerance: float = 1.0) -> dict:
    return {"per_cell": {cell: 0.1 for cell in cells}, "tolerance": tolerance}


def test_a_merge_replaces_measured_keys_keeps_others_and_drops_vanished_ones() -> None:
    before = {
        "ch03-training": record("03_a.ipynb code cell 6"),
        "ch08-losses": record("08_b.ipynb code cell 3", tolerance=9.0),
        "ch08-gone": record("08_b.ipynb code cell 9"),
    }
    fresh = {"ch08-losses": record("08_b.ipynb code cell 3", tolerance=0.1)}
    merged = spread.merged_keys(before, fresh, {"08_b.ipynb"})
    assert merged == {"ch08-losses": fresh["ch08-losses"], "ch03-training": before["ch03-training"]}


def test_without_the_measured_notebook_nothing_is_dropped() -> None:
    """Negative control: the same earlier keys survive when 08_b.ipynb was not measured."""
    before = {"ch08-gone": record("08_b.ipynb code cell 9")}
    assert spread.merged_keys(before, {}, {"03_a.ipynb"}) == before

"""Chapter 11's paired table: each row is the paired difference of the stored study's arms."""

from __future__ import annotations

import copy

from modularforge.chapters.ch11_mixture_report import paired_table
from modularforge.chapters.ch11_mixture_study import read_study
from modularforge.repo_paths import BOOK_DATA_DIR

STUDY = read_study(BOOK_DATA_DIR / "mixture-study-tiny.json")


def row(table: str, arm: str, baseline: str) -> list[str]:
    line = next(ln for ln in table.splitlines() if f"`{arm}` − `{baseline}`" in ln)
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_the_calibration_row_is_called_worse_where_the_ranges_cannot_tell() -> None:
    cells = row(paired_table(STUDY), "dense_eqflops", "dense")
    assert cells[0].startswith("calibration: dense on 88 % of the steps")
    assert cells[2:] == ["worse", "not settled"]


def test_negative_control_swapping_the_seeds_of_one_arm_changes_the_pairing() -> None:
    """Paired means paired: reversing one arm's seeds breaks the pairing, and the verdict."""
    study = copy.deepcopy(STUDY)
    study["arms"]["branched_oracle"]["mixed"].reverse()
    assert row(paired_table(STUDY), "branched_oracle", "phase1")[2] == "better"
    assert row(paired_table(study), "branched_oracle", "phase1")[2] == "not settled"

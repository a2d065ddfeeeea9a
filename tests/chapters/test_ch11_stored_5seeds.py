"""Chapter 11's five-seed study and its one-change reruns, as stored.

The study takes about half an hour (`make studies`), so the suite checks the stored files:
the study ran the rates its sweeps chose, each rerun differs from it in exactly one
setting, and the verdict rule passes its calibration on these seeds.
"""

from __future__ import annotations

from modularforge.chapters.ch11_lr_sweep import best_rates, read_sweep
from modularforge.chapters.ch11_mixture_study import read_study
from modularforge.chapters.ch11_repairs import merged_sweep
from modularforge.measure.paired import paired_difference
from modularforge.repo_paths import BOOK_DATA_DIR

MAIN = read_study(BOOK_DATA_DIR / "mixture-study-5seeds.json")
RERUNS = {
    "router_input": read_study(BOOK_DATA_DIR / "mixture-study-5seeds-raw-router.json"),
    "later_lr": read_study(BOOK_DATA_DIR / "mixture-study-5seeds-continue.json"),
}


def test_the_study_ran_five_seeds_at_the_rates_its_sweeps_chose() -> None:
    first = read_sweep(BOOK_DATA_DIR / "lr-sweep-tiny.json")
    dense = merged_sweep(
        {**first, "later": {}}, read_sweep(BOOK_DATA_DIR / "lr-sweep-tiny-dense-low.json")
    )
    later = read_sweep(BOOK_DATA_DIR / "lr-sweep-tiny-later.json")
    settings = MAIN["settings"]
    assert settings["seeds"] == [0, 1, 2, 3, 4]
    assert not set(later["seeds"]) & set(settings["seeds"])
    assert settings["lr"] == best_rates(dense)["dense"] == later["settings"]["lr"]
    assert settings["later_lr"] == best_rates(later)["mix_shared"]
    assert settings["router_input"] == "layernorm"


def test_each_rerun_differs_from_the_study_in_its_one_setting_and_shares_its_dense_arms() -> None:
    for setting, rerun in RERUNS.items():
        differ = {k for k in MAIN["settings"] if MAIN["settings"][k] != rerun["settings"].get(k)}
        assert differ - {"dense_eqflops"} == {setting}, (setting, differ)
        assert rerun["arms"]["dense"]["mixed"] == MAIN["arms"]["dense"]["mixed"]


def test_the_paired_rule_passes_its_calibration_on_these_seeds() -> None:
    """Dense on 88 % of the steps must come out worse than dense on all of them."""
    arms = MAIN["arms"]
    calibration = paired_difference(arms["dense_eqflops"]["mixed"], arms["dense"]["mixed"])
    assert arms["dense_eqflops"]["steps"] < arms["dense"]["steps"]
    assert calibration.verdict == "higher", calibration.describe()

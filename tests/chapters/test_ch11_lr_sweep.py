"""The learning-rate sweep: equal grids for both sides, tuning seeds apart from the study's, best by mean."""

from __future__ import annotations

from modularforge.chapters.ch11_lr_sweep import (
    DENSE_GRID,
    LATER_ARMS,
    LATER_GRID,
    SWEEP_SEEDS,
    best_rates,
)
from modularforge.chapters.ch11_mixture_study import MixtureStudySettings


def test_both_sides_get_the_same_number_of_rates_and_the_tuning_seeds_are_not_reported() -> None:
    assert len(DENSE_GRID) == len(LATER_GRID) == 5
    assert MixtureStudySettings().lr in DENSE_GRID and MixtureStudySettings().later_lr in LATER_GRID
    assert not set(SWEEP_SEEDS) & set(range(5))  # the study reports seeds 0-4


def test_the_best_rate_is_the_lowest_mean_not_the_lowest_single_seed() -> None:
    sweep = {
        "dense": {"0.005": [5.0, 6.0], "0.01": [5.4, 5.4], "0.02": [5.9, 5.9]},
        "later": {
            lr: {arm: [5.0 + 0.1 * k, 5.0 + 0.1 * k] for arm in LATER_ARMS}
            for k, lr in enumerate(["0.0003", "0.001", "0.003"])
        },
    }
    best = best_rates(sweep)
    assert best["dense"] == 0.01  # 0.005 has the lowest single run (5.0) but mean 5.5
    assert all(best[arm] == 0.0003 for arm in LATER_ARMS)

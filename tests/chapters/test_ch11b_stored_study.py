"""Chapter 11b's stored study: the settings the chapter describes, and the promise it reports.

The study is long (see `make studies`); the suite checks the stored file instead of
rerunning it: the settings, that every seed kept the old experts bit-identical, that C
forgets exactly nothing, that D is A's run with the old model kept, and that the
report's numbers are recomputed from the per-seed losses.
"""

from __future__ import annotations

import statistics

import pytest

from modularforge.chapters.ch11b_new_domain import (
    ARMS,
    NewDomainSettings,
    matched_expert_steps,
    read_new_domain_study,
)
from modularforge.chapters.ch11b_new_domain_report import (
    C_VS_B,
    arm_rows,
    best_lr,
    comparisons,
    forgetting,
    gains,
)
from modularforge.repo_paths import BOOK_DATA_DIR

STUDY = read_new_domain_study(BOOK_DATA_DIR / "new-domain-study.json")


def test_the_stored_study_ran_the_default_settings_on_five_seeds() -> None:
    defaults = NewDomainSettings()
    settings = STUDY["settings"]
    assert settings["seeds"] == [0, 1, 2, 3, 4]
    assert settings["lr_grid"] == list(defaults.lr_grid)
    assert settings["dense_steps"] == defaults.dense_steps
    assert all(
        s["expert_steps_matched"] == matched_expert_steps(defaults) for s in STUDY["per_seed"]
    )
    assert set(STUDY["arms"]) == set(ARMS)


def test_every_seed_kept_the_old_experts_bit_identical_and_c_forgets_exactly_nothing() -> None:
    assert all(seed["old_outputs_bit_identical"] for seed in STUDY["per_seed"])
    for arm in ("C_expert", "C_expert_2x", "C_from_python"):
        for lr in STUDY["settings"]["lr_grid"]:
            assert forgetting(STUDY, arm, repr(lr)) == [0.0] * 5


def test_fine_tuning_forgets_and_the_btm_branch_is_its_run_with_the_old_model_kept() -> None:
    for lr in map(repr, STUDY["settings"]["lr_grid"]):
        assert min(forgetting(STUDY, "A_finetune", lr)) > 0  # every seed, every rate
        assert gains(STUDY, "D_branch", lr) == gains(STUDY, "A_finetune", lr)
        assert forgetting(STUDY, "D_branch", lr) == [0.0] * 5


def test_the_report_reads_each_arm_at_its_best_rate() -> None:
    for row in arm_rows(STUDY):
        lr = best_lr(STUDY, row.arm)
        assert row.lr == float(lr)
        assert row.gain.mean == pytest.approx(statistics.fmean(gains(STUDY, row.arm, lr)))
        others = [
            statistics.fmean(gains(STUDY, row.arm, repr(x))) for x in STUDY["settings"]["lr_grid"]
        ]
        assert row.gain.mean == pytest.approx(max(others))
    assert comparisons(STUDY)[C_VS_B].differences == tuple(
        c - b
        for c, b in zip(
            gains(STUDY, "C_expert", best_lr(STUDY, "C_expert")),
            gains(STUDY, "B_replay", best_lr(STUDY, "B_replay")),
            strict=True,
        )
    )

"""The frozen-vs-full arms differ in one setting each, and the analytic rows match a real step."""

from __future__ import annotations

import pytest

from modularforge.measure.arms import ARMS, arm_rows, peak_gaps_within_tolerance
from modularforge.measure.memory import MB
from modularforge.model.config import ModelConfig
from modularforge.plots.memory_plots import measure_step

SEED = ModelConfig.seed()


def test_each_arm_changes_exactly_one_setting_from_the_one_before():
    arms = list(ARMS.values())
    for before, after in zip(arms, arms[1:], strict=False):
        settings = [
            (before.frozen, after.frozen),
            (before.attention_path, after.attention_path),
            (before.trunk_dropout, after.trunk_dropout),
        ]
        assert sum(a != b for a, b in settings) == 1, after.change


@pytest.fixture(scope="module")
def measured():
    return {
        name: measure_step(SEED, 2, 64, arm.frozen, seed=0, **arm.settings)
        for name, arm in ARMS.items()
    }


def test_rows_match_a_measured_step_of_every_arm(measured):
    rows = arm_rows(SEED, 2, 64, measured)
    for row in rows:
        # Activations exact to the byte, through the MB conversion.
        assert row["measured act. MB"] == row["activations MB"], row["arm"]
    assert peak_gaps_within_tolerance(rows)
    # The check can fail: each arm's analytic activations against the next arm's step.
    for row, other in zip(rows, list(ARMS)[1:], strict=False):
        assert measured[other].activations / MB != row["activations MB"], (row["arm"], other)


def test_at_16_by_512_freezing_alone_is_smaller_than_the_old_comparison():
    """Full vs expert differing only in freezing: 3,307 MB, not the 5,001 MB of the mixed arm."""
    rows = {row["arm"]: row for row in arm_rows(SEED, 16, 512)}
    assert round(rows["expert"]["peak MB"], 1) == 3038.3
    assert round(rows["full"]["peak MB"], 1) == 3307.2
    assert round(rows["full-dropout"]["peak MB"], 1) == 5000.7
    assert rows["expert"]["peak MB"] < rows["full"]["peak MB"] < rows["full-math"]["peak MB"]
    assert rows["full-math"]["peak MB"] < rows["full-dropout"]["peak MB"]

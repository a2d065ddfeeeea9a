"""Paired differences over seeds: the interval's arithmetic, its calibration, its refusals."""

from __future__ import annotations

import json
import math

import pytest

from modularforge.measure.paired import paired_difference, t_975
from modularforge.measure.spread import range_verdict
from modularforge.repo_paths import BOOK_DATA_DIR


def test_the_interval_is_mean_plus_minus_t_times_the_standard_error() -> None:
    pair = paired_difference([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])  # d = 1, 2, 3: sd 1
    half = 4.303 / math.sqrt(3)
    assert pair.mean == 2.0
    assert pair.low == pytest.approx(2.0 - half) and pair.high == pytest.approx(2.0 + half)
    assert pair.verdict == "inconclusive"  # the interval reaches below zero
    assert pair.describe(2) == "+2.00 [-0.48, +4.48]"


def test_pairing_sees_an_effect_that_the_ranges_hide() -> None:
    seeds = [5.0, 5.4, 4.8, 5.2, 5.1]  # a seed-to-seed spread of 0.6
    better = [x - 0.05 for x in seeds]  # 0.05 lower on every seed
    assert paired_difference(better, seeds).verdict == "lower"
    assert paired_difference(seeds, better).verdict == "higher"
    # Negative control: the range rule, which ignores the pairing, cannot see it.
    assert range_verdict(better, seeds) == "inconclusive"


def test_calibrated_on_a_known_answer_from_the_stored_study() -> None:
    """Dense trained on 88 % of the steps must come out worse than dense on all of them."""
    arms = json.loads((BOOK_DATA_DIR / "mixture-study-tiny.json").read_text())["arms"]
    shorter, full = arms["dense_eqflops"], arms["dense"]
    assert shorter["steps"] < full["steps"]
    assert paired_difference(shorter["mixed"], full["mixed"]).verdict == "higher"
    # The range rule fails the same calibration: that is why the headline verdicts pair.
    assert range_verdict(shorter["mixed"], full["mixed"]) == "inconclusive"


@pytest.mark.parametrize(
    ("a", "b", "message"),
    [
        ([1.0, 2.0, 3.0], [1.0, 2.0], "one value per seed on both sides"),
        ([1.0, 2.0], [1.0, 2.0], "needs >= 3 seeds"),
        ([1.0, math.nan, 3.0], [1.0, 2.0, 3.0], "finite numbers"),
    ],
)
def test_bad_inputs_are_refused_by_name(a: list[float], b: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        paired_difference(a, b)


def test_t_values() -> None:
    assert (t_975(2), t_975(4), t_975(9)) == (4.303, 2.776, 2.262)
    assert t_975(100) == t_975(30)  # conservative past the table
    with pytest.raises(ValueError, match="at least 1 degree of freedom"):
        t_975(0)

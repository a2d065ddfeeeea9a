"""The one verdict rule: a direction only when the ranges separate, >= 3 seeds each."""

import pytest

from modularforge.measure.spread import MIN_SEEDS, range_verdict, spread


def test_spread_is_mean_sample_std_and_range():
    s = spread([1.0, 2.0, 4.0])
    assert s.mean == pytest.approx(7 / 3)
    assert s.std == pytest.approx(1.527525, rel=1e-6)
    assert (s.low, s.high) == (1.0, 4.0)
    assert s.text(2) == "2.33 ± 1.53"
    assert s.range_text(1) == "2.3 (1.0–4.0)"
    assert spread([5.0]).std == 0.0


@pytest.mark.parametrize("values", [[], [1.0, float("nan")], [float("inf"), 1.0, 2.0]])
def test_spread_refuses_empty_or_non_finite_values(values):
    with pytest.raises(ValueError, match="finite"):
        spread(values)


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ([5.00, 5.01, 5.02], [5.03, 5.04, 5.05], "lower"),  # separated, a below
        ([5.03, 5.04, 5.05], [5.00, 5.01, 5.02], "higher"),  # separated, a above
        ([1.0, 2.0, 3.0, 4.0], [10.0, 11.0, 12.0], "lower"),  # unequal seed counts are fine
    ],
)
def test_separated_ranges_give_a_direction(a, b, expected):
    assert range_verdict(a, b) == expected
    assert range_verdict(spread(a), spread(b)) == expected


@pytest.mark.parametrize(
    ("a", "b"),
    [
        # The negative control: a's mean is clearly lower, every seed but one agrees,
        # and still a's worst seed reaches into b's range -> no direction.
        ([5.00, 5.01, 5.04], [5.03, 5.05, 5.06]),
        ([5.00, 5.01, 5.03], [5.03, 5.05, 5.06]),  # touching ranges count as overlapping
        ([5.0, 5.0, 5.0], [5.0, 5.0, 5.0]),  # identical
        ([4.0, 5.0, 6.0], [4.9, 5.0, 5.1]),  # one range inside the other
    ],
)
def test_overlapping_ranges_are_inconclusive(a, b):
    assert range_verdict(a, b) == "inconclusive"
    assert range_verdict(b, a) == "inconclusive"


@pytest.mark.parametrize(
    ("a", "b"), [([1.0, 2.0], [5.0, 6.0, 7.0]), ([1.0, 2.0, 3.0], [9.0]), ([1.0], [2.0])]
)
def test_fewer_than_three_seeds_are_refused(a, b):
    assert MIN_SEEDS == 3
    with pytest.raises(ValueError, match=">= 3 seeds per arm"):
        range_verdict(a, b)

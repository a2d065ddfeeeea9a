"""Paired comparisons over seeds: the mean per-seed difference and its 95 % interval.

Arms of one study share each seed's initialisation and batch order, so much of the
seed-to-seed spread is common to both and cancels in the per-seed difference d_i.
Comparing the arms' ranges (`spread.range_verdict`) ignores that pairing and misses
effects smaller than the spread; this module compares the differences instead, with
Student's t interval: mean(d) ± t(0.975, n − 1) · sd(d) / √n. A difference is called
real when the interval excludes zero. The rule is only trusted where it calls a
comparison whose answer is known (the same model trained on fewer steps must come
out worse): `tests/measure/test_paired.py` and the payoff chapter check that.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from modularforge.measure.spread import Verdict

#: Student's t at 0.975 for 1 to 30 degrees of freedom (two-sided 95 %).
T_975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip
#: Fewer pairs than this give an interval too wide to decide anything at this scale.
MIN_PAIRS = 3


@dataclass(frozen=True)
class PairedDifference:
    """a − b, seed by seed: the mean difference, its 95 % interval, and what it says."""

    differences: tuple[float, ...]
    mean: float
    low: float
    high: float

    @property
    def verdict(self) -> Verdict:
        """ "lower" when the whole interval is below zero, "higher" above, else "inconclusive"."""
        if self.high < 0:
            return "lower"
        if self.low > 0:
            return "higher"
        return "inconclusive"

    def describe(self, digits: int = 3) -> str:
        """'+0.129 [+0.075, +0.182]': the mean difference and its interval."""
        return f"{self.mean:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}]"


def t_975(degrees_of_freedom: int) -> float:
    """Student's t at 0.975; past 30 degrees of freedom the value at 30 (slightly wide)."""
    if degrees_of_freedom < 1:
        raise ValueError(
            f"a t interval needs at least 1 degree of freedom, got {degrees_of_freedom}"
        )
    return T_975[min(degrees_of_freedom, len(T_975)) - 1]


def paired_difference(a: Sequence[float], b: Sequence[float]) -> PairedDifference:
    """Compare arm a with arm b seed by seed (a[i] and b[i] share seed i)."""
    if len(a) != len(b):
        raise ValueError(
            f"paired arms need one value per seed on both sides; got {len(a)} and {len(b)}"
        )
    if len(a) < MIN_PAIRS:
        raise ValueError(
            f"a paired interval needs >= {MIN_PAIRS} seeds, got {len(a)}. Run more seeds."
        )
    values = [float(x) for x in (*a, *b)]
    if not all(math.isfinite(x) for x in values):
        raise ValueError(f"paired arms must hold finite numbers; got {list(a)} and {list(b)}")
    differences = tuple(x - y for x, y in zip(a, b, strict=True))
    mean = statistics.fmean(differences)
    half = t_975(len(differences) - 1) * statistics.stdev(differences) / math.sqrt(len(differences))
    return PairedDifference(differences, mean, mean - half, mean + half)

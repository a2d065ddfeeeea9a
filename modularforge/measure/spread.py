"""One figure over several seeds, and the one rule the book uses to call a difference.

A single training run decides nothing about a small gap: another seed changes the
initialisation and the batch order, and with them every loss. So wherever the book
compares two arms over seeds it summarises each arm as a `Spread` (mean, sample
standard deviation, and the min-max range of the per-seed values) and decides with
`range_verdict`:

* "lower" only when arm a's whole range lies below arm b's (every seed of a beats
  every seed of b: max(a) < min(b));
* "higher" when a's whole range lies above b's;
* otherwise "inconclusive": the spreads overlap, so the seeds' own variation covers
  the gap.

The rule needs at least `MIN_SEEDS` values on each side: with one or two seeds a
range says almost nothing about how far the next seed could land. It is deliberately
conservative (it ignores how the seeds pair up), so a "lower" is a strong statement
and an "inconclusive" is not evidence that the arms are equal.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = ["MIN_SEEDS", "Spread", "Verdict", "range_verdict", "spread"]

#: The fewest seeds per arm `range_verdict` accepts.
MIN_SEEDS = 3

Verdict = Literal["lower", "higher", "inconclusive"]


@dataclass(frozen=True)
class Spread:
    """Mean, sample standard deviation (n - 1) and min-max range of one figure over seeds."""

    values: tuple[float, ...]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0

    @property
    def low(self) -> float:
        return min(self.values)

    @property
    def high(self) -> float:
        return max(self.values)

    def text(self, digits: int = 1) -> str:
        """ "mean ± std" as printed in the book's tables."""
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}"

    def range_text(self, digits: int = 3) -> str:
        """ "mean (min-max)": the form the range rule reads."""
        return f"{self.mean:.{digits}f} ({self.low:.{digits}f}–{self.high:.{digits}f})"


def spread(values: Sequence[float]) -> Spread:
    """A `Spread` of at least one finite value."""
    values = tuple(float(v) for v in values)
    if not values or not all(math.isfinite(v) for v in values):
        raise ValueError(f"spread needs at least one value, all finite; got {values}")
    return Spread(values)


def range_verdict(a: Sequence[float] | Spread, b: Sequence[float] | Spread) -> Verdict:
    """Is figure a "lower" or "higher" than b over seeds, or is it "inconclusive"?

    "lower" only when every seed of a is below every seed of b (the ranges do not
    touch), "higher" for the mirror case, "inconclusive" when the ranges overlap.
    Each side needs at least `MIN_SEEDS` values; fewer raise `ValueError`, because a
    verdict from one or two seeds is exactly what this rule exists to prevent.
    """
    a = a if isinstance(a, Spread) else spread(a)
    b = b if isinstance(b, Spread) else spread(b)
    for name, side in (("a", a), ("b", b)):
        if len(side.values) < MIN_SEEDS:
            raise ValueError(
                f"range_verdict needs >= {MIN_SEEDS} seeds per arm; arm {name} has "
                f"{len(side.values)} ({list(side.values)}). Run more seeds."
            )
    if a.high < b.low:
        return "lower"
    if a.low > b.high:
        return "higher"
    return "inconclusive"

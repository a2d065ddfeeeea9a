"""How far a trained number may move on another CPU, and a check that holds it there.

A number computed without training (a count, bytes, a shape, a fingerprint of
untrained weights) is the same everywhere and is compared exactly. A trained
number is not: ATen and the BLAS choose vector kernels by CPU capability, those
round differently, and a few hundred optimizer steps turn a difference in the
eighth digit into one in the second. So each notebook cell that prints trained
numbers names a *tolerance key* in its metadata (``"cpu_tolerance": {"key": ...,
"scale": "abs" | "rel"}``), and `book/data/cpu-spread.json` holds, per key, the
spread measured across CPU capabilities and thread counts and the tolerance
derived from it (`scripts/measure_cpu_spread.py` writes it). The notebook test
compares such a cell's text with every number allowed to move by that tolerance
and everything else (words, verdicts, counts' layout) required to match.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from modularforge.measure.text_table import markdown_table
from modularforge.repo_paths import BOOK_DATA_DIR

SPREAD_FILE: Path = BOOK_DATA_DIR / "cpu-spread.json"
#: The tolerance is this many times the largest spread measured: the simulated CPUs
#: are a sample, and a reader's CPU may round a little further from ours.
MARGIN = 2.0

Scale = Literal["abs", "rel"]

# A number standing on its own: not part of an identifier like `fc1` or a hash like
# `e52c9681`, optionally signed, with thousands separators, decimals and an exponent.
_NUMBER = re.compile(
    r"(?<![\w.])[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w])"
)
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class Tolerance:
    """How far each number in a cell may move: absolute (in the number's unit) or relative."""

    scale: Scale
    value: float

    def __post_init__(self) -> None:
        if self.scale not in ("abs", "rel"):
            raise ValueError(f"scale must be 'abs' or 'rel', got {self.scale!r}")
        if not (
            isinstance(self.value, int | float) and math.isfinite(self.value) and self.value >= 0
        ):
            raise ValueError(f"a tolerance must be a finite number >= 0, got {self.value!r}")

    def deviation(self, reference: float, observed: float) -> float:
        """How far `observed` is from `reference`, in this tolerance's scale."""
        gap = abs(observed - reference)
        if self.scale == "abs":
            return gap
        return gap / abs(reference) if reference else (0.0 if gap == 0 else math.inf)

    def allows(self, reference: float, observed: float) -> bool:
        return self.deviation(reference, observed) <= self.value

    def describe(self, unit: str = "") -> str:
        """'±0.12 nats' or '±3 %': how the chapters print it."""
        if self.scale == "rel":
            return f"±{_short(self.value * 100)} %"
        return f"±{_short(self.value)}{' ' + unit if unit else ''}"


def _short(value: float) -> str:
    """Two significant digits without an exponent: 0.093, 2.6, 260."""
    return f"{value:,.0f}" if value >= 10 else f"{value:.2g}"


@dataclass(frozen=True)
class TextNumbers:
    """A text cut into its words (whitespace runs collapsed) and the numbers between them."""

    skeleton: tuple[str, ...]
    numbers: tuple[float, ...]


def split_numbers(text: str) -> TextNumbers:
    """Separate the numbers of `text` from the rest, so each side can be compared its own way."""
    parts = _NUMBER.split(text)
    found = _NUMBER.findall(text)
    skeleton = tuple(_SPACE.sub(" ", part) for part in parts)
    numbers = tuple(float(token.replace(",", "")) for token in found)
    return TextNumbers(skeleton, numbers)


@dataclass(frozen=True)
class Comparison:
    """The outcome of comparing one output text with its stored reference."""

    same_words: bool  # everything but the numbers matches
    worst: float  # the largest deviation of a number, in the tolerance's scale
    n_numbers: int
    reason: str  # empty when within tolerance

    @property
    def ok(self) -> bool:
        return not self.reason


def compare_text(reference: str, observed: str, tolerance: Tolerance) -> Comparison:
    """Compare `observed` with `reference`: the same words, every number within `tolerance`."""
    ref, obs = split_numbers(reference), split_numbers(observed)
    if ref.skeleton != obs.skeleton or len(ref.numbers) != len(obs.numbers):
        return Comparison(False, math.inf, len(ref.numbers), "the text around the numbers differs")
    deviations = [tolerance.deviation(a, b) for a, b in zip(ref.numbers, obs.numbers, strict=True)]
    worst = max(deviations, default=0.0)
    if worst > tolerance.value:
        index = deviations.index(worst)
        reason = (
            f"{obs.numbers[index]:g} is {worst:.3g} ({tolerance.scale}) from the stored "
            f"{ref.numbers[index]:g}, beyond the measured tolerance {tolerance.value:.3g}"
        )
        return Comparison(True, worst, len(ref.numbers), reason)
    return Comparison(True, worst, len(ref.numbers), "")


def compare_numbers(
    reference: str, observed: str, tolerances: list[Tolerance | None]
) -> Comparison:
    """Like `compare_text`, with one tolerance per number in order (None: must be equal)."""
    ref, obs = split_numbers(reference), split_numbers(observed)
    if ref.skeleton != obs.skeleton or not len(ref.numbers) == len(obs.numbers) == len(tolerances):
        return Comparison(False, math.inf, len(ref.numbers), "the text around the numbers differs")
    for a, b, tolerance in zip(ref.numbers, obs.numbers, tolerances, strict=True):
        if tolerance is None and a != b:
            return Comparison(True, math.inf, len(ref.numbers), f"{b:g} should equal {a:g} exactly")
        if tolerance is not None and not tolerance.allows(a, b):
            reason = f"{b:g} is beyond {a:g} {tolerance.describe()}"
            return Comparison(True, tolerance.deviation(a, b), len(ref.numbers), reason)
    return Comparison(True, 0.0, len(ref.numbers), "")


def load_spread(path: str | Path = SPREAD_FILE) -> dict[str, dict]:
    """The measured spreads and tolerances, by key, from `book/data/cpu-spread.json`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path}: no measured CPU spread; run `make cpu-spread` to measure it"
        ) from None
    keys = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(keys, dict):
        raise ValueError(
            f"{path}: expected an object with a 'keys' object; rerun `make cpu-spread`"
        )
    return keys


def tolerance_for(key: str, path: str | Path = SPREAD_FILE) -> Tolerance:
    """The tolerance measured for `key`."""
    keys = load_spread(path)
    if key not in keys:
        raise KeyError(
            f"no measured tolerance for {key!r} in {path}; known keys: {sorted(keys)}. "
            "Run `make cpu-spread` after adding a tolerant cell"
        )
    entry = keys[key]
    return Tolerance(entry["scale"], float(entry["tolerance"]))


def measured_spread(key: str, path: str | Path = SPREAD_FILE) -> float:
    """The largest deviation measured for `key` across the simulated CPUs."""
    tolerance_for(key, path)  # the same checks and messages
    return float(load_spread(path)[key]["max_spread"])


def landing_note(key: str, unit: str = "", path: str | Path = SPREAD_FILE) -> str:
    """One line for a training cell: how close a reader's run of it should land."""
    tolerance = tolerance_for(key, path)
    return (
        f"On another CPU (other vector kernels or thread count) the trained numbers above land "
        f"within {tolerance.describe(unit)} of these; the words and counts stay the same."
    )


def tolerance_from_spread(max_spread: float, scale: Scale) -> Tolerance:
    """MARGIN times the largest measured spread, rounded up to two significant digits."""
    raw = max(max_spread * MARGIN, 1e-9)
    digits = 1 - math.floor(math.log10(raw))
    rounded = math.ceil(raw * 10**digits) / 10**digits
    return Tolerance(scale, float(f"{rounded:.12g}"))


def spread_table(path: str | Path = SPREAD_FILE) -> str:
    """The measured spread as a Markdown table: one row per key, one column per simulated CPU.

    The measurement appendix shows it so a reader can see how each tolerance was earned:
    the largest deviation on each simulated CPU, the largest of those, and the tolerance.
    A Markdown table renders as a real table in Jupyter Book, JupyterLab and Colab alike.
    """
    keys = load_spread(path)
    configs = sorted({config for entry in keys.values() for config in entry["per_config"]})
    header = ["tolerance key", "scale", *configs, "largest", "tolerance"]
    rows = [
        [f"`{key}`", entry["scale"]]
        + [_significant(entry["per_config"].get(config)) for config in configs]
        + [_significant(entry["max_spread"]), _significant(entry["tolerance"])]
        for key, entry in sorted(keys.items())
    ]
    return markdown_table(header, rows, right=range(2, len(header)))


def _significant(value: float | None) -> str:
    """Three significant digits, or a dash where a key was not measured on that CPU."""
    return "-" if value is None else f"{value:.3g}"

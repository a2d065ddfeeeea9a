"""Trained numbers compared within a tolerance: the words must match, the numbers may move."""

from __future__ import annotations

import json
import math

import pytest

from modularforge.measure.reproducibility import (
    Tolerance,
    compare_text,
    landing_note,
    split_numbers,
    spread_table,
    tolerance_for,
    tolerance_from_spread,
)

NATS = Tolerance("abs", 0.1)


def test_numbers_are_split_from_words_but_not_from_names_or_hashes() -> None:
    found = split_numbers("phase 1 loss 7.644 -> 5.888 nats; fc1 e52c9681 4,142.7 -0.05 1e-3")
    assert found.numbers == (1.0, 7.644, 5.888, 4142.7, -0.05, 0.001)
    assert "fc1 e52c9681" in "".join(found.skeleton)


def test_a_trained_number_within_tolerance_passes() -> None:
    assert compare_text("val loss 5.888 nats", "val loss 5.842 nats", NATS).ok


def test_negative_control_a_number_beyond_tolerance_fails() -> None:
    result = compare_text("val loss 5.888 nats", "val loss 5.742 nats", NATS)
    assert not result.ok and result.same_words
    assert "5.742 is 0.146 (abs) from the stored 5.888" in result.reason


@pytest.mark.parametrize(
    ("stored", "fresh"),
    [
        ("bit-identical: True", "bit-identical: False"),  # a verdict
        ("fingerprint e52c9681efc3", "fingerprint e52c9681efc4"),  # a hash is a word
        ("loss 5.888 nats", "loss 5.888 nats 1.0"),  # an extra number
        ("held", "does not hold"),
    ],
)
def test_words_and_verdicts_compare_exactly(stored: str, fresh: str) -> None:
    assert not compare_text(stored, fresh, Tolerance("abs", 1e9)).ok


def test_column_alignment_may_shift_when_a_number_grows_a_digit() -> None:
    assert compare_text("gap    99.9 |", "gap   100.0 |", Tolerance("abs", 0.2)).ok


def test_relative_tolerance() -> None:
    ppl = Tolerance("rel", 0.05)
    assert compare_text("ppl 313.7", "ppl 325.0", ppl).ok
    assert not compare_text("ppl 313.7", "ppl 340.0", ppl).ok
    assert not ppl.allows(0.0, 0.001) and ppl.allows(0.0, 0.0)


def test_tolerance_is_the_margin_times_the_spread_rounded_up() -> None:
    assert tolerance_from_spread(0.0462, "abs").value == pytest.approx(0.093)
    assert tolerance_from_spread(0.0, "rel").value > 0
    assert tolerance_from_spread(1.3, "rel").describe() == "±260 %"


@pytest.mark.parametrize("bad", [("nats", 0.1), ("abs", -1.0), ("abs", math.nan)])
def test_bad_tolerances_are_refused(bad: tuple) -> None:
    with pytest.raises(ValueError):
        Tolerance(*bad)


def test_tolerances_are_read_by_key(tmp_path) -> None:
    path = tmp_path / "spread.json"
    path.write_text(json.dumps({"keys": {"k": {"scale": "abs", "tolerance": 0.12}}}))
    assert tolerance_for("k", path) == Tolerance("abs", 0.12)
    assert "within ±0.12 nats" in landing_note("k", "nats", path)
    with pytest.raises(KeyError, match="no measured tolerance for 'other'"):
        tolerance_for("other", path)
    with pytest.raises(FileNotFoundError, match="make cpu-spread"):
        tolerance_for("k", tmp_path / "missing.json")


def test_the_spread_table_has_a_row_per_key_and_a_column_per_cpu(tmp_path) -> None:
    entry = {"scale": "abs", "max_spread": 0.25, "tolerance": 0.5}
    keys = {
        "b-key": {**entry, "per_config": {"plain": 0.25, "avx2": 0.125}},
        "a-key": {**entry, "per_config": {"plain": 0.0312}},  # not measured on avx2
    }
    path = tmp_path / "spread.json"
    path.write_text(json.dumps({"keys": keys}))
    lines = spread_table(path).splitlines()
    assert lines[0] == "| tolerance key | scale | avx2 | plain | largest | tolerance |"
    assert lines[2] == "| `a-key` | abs | - | 0.0312 | 0.25 | 0.5 |"  # sorted; a gap is a dash
    assert lines[3] == "| `b-key` | abs | 0.125 | 0.25 | 0.25 | 0.5 |"
    # Every row has as many cells as the header.
    assert {line.count("|") for line in lines} == {7}

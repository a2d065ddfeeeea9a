"""The repairs' evidence: fresh-router entropy by input, merged sweeps, and one-change paired rows."""

from __future__ import annotations

import math

import pytest

from modularforge.chapters.ch11_repairs import init_entropy, merged_sweep, repair_rows, sweep_rows
from modularforge.repo_paths import BOOK_DATA_DIR

pytestmark = pytest.mark.usefixtures("one_thread_per_module")


def test_a_fresh_router_is_uniform_on_the_normalised_stream_and_saturated_on_the_raw_one() -> None:
    entropy = init_entropy(BOOK_DATA_DIR / "pipeline-tiny", 2)
    uniform = math.log(3)
    assert min(entropy["layernorm"]) > 0.9 * uniform
    assert max(entropy["raw"]) < 0.5 * uniform  # the negative control: the saturated router


def test_sweeps_merge_only_on_the_same_seeds() -> None:
    a = {"seeds": [100, 101], "dense": {"0.01": [5.0, 5.0]}, "later": {}}
    b = {"seeds": [100, 101], "dense": {"0.005": [4.0, 4.2]}, "later": {}}
    merged = merged_sweep(a, b)
    assert sweep_rows(merged) == [["dense (whole model)", "0.005", "4.100"],
                                  ["dense (whole model)", "0.01", "5.000"]]  # fmt: skip
    with pytest.raises(ValueError, match="different seeds"):
        merged_sweep(a, {**b, "seeds": [0, 1]})


def test_a_repair_row_is_the_paired_difference_and_refuses_other_seeds() -> None:
    main = {"settings": {"seeds": [0, 1, 2]}, "arms": {"mix": {"mixed": [5.0, 5.1, 5.2]}}}
    raw = {"settings": {"seeds": [0, 1, 2]}, "arms": {"mix": {"mixed": [5.1, 5.2, 5.35]}}}
    (row,) = repair_rows(main, [("raw router", raw, "mix")])
    assert row["pair"].differences == pytest.approx((-0.1, -0.1, -0.15))
    assert row["pair"].verdict == "lower"
    with pytest.raises(ValueError, match="different seeds"):
        repair_rows(main, [("x", {**raw, "settings": {"seeds": [3, 4, 5]}}, "mix")])

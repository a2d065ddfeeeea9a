"""The measurements stored in book/data/ still describe the package as it is now.

Chapter 6 shows stored benchmark and ladder results, because the real runs take
minutes. These tests keep them honest without the minutes: everything in them
that does not depend on the clock is either re-derived from the analytic model
(static memory, FLOPs saved, the predicted peaks) or re-measured in a short run
at the same shape (memory by category to the byte, FLOPs to the FLOP, the peak
within a few percent). Step times are never checked: tests do not time things.
A change to the model that makes a stored file stale fails here, and
`make measurements` regenerates the files.
"""

from __future__ import annotations

from typing import Any

import pytest

from modularforge.lean.step import LEAN_EXPERT, LeanOptions
from modularforge.measure.bench import CONFIGURATIONS, flop_saving, run_bench
from modularforge.measure.ladder import TRAINING_SETTINGS, lean_ladder
from modularforge.measure.memory import memory_budget
from modularforge.measure.peak import peak_budget
from modularforge.model.config import ModelConfig
from modularforge.plots import bench_plots
from modularforge.repo_paths import BOOK_DATA_DIR

STATIC_CATEGORIES = ("params_frozen", "params_trainable", "grads", "optimizer_state", "static")


def _config(result: dict[str, Any]) -> ModelConfig:
    config = ModelConfig.preset(result["preset"])
    assert config.to_dict() == result["config"], "the preset changed since the file was made"
    return config


@pytest.fixture(scope="module")
def main_run() -> dict[str, Any]:
    return bench_plots.load_bench(BOOK_DATA_DIR / "bench-cpu-seed-4x256.json")


@pytest.fixture(scope="module")
def lean_run() -> dict[str, Any]:
    return bench_plots.load_bench(BOOK_DATA_DIR / "bench-cpu-seed-lean.json")


@pytest.fixture(scope="module")
def ladder() -> dict[str, Any]:
    return bench_plots.load_ladder(BOOK_DATA_DIR / "lean-ladder-cpu-seed.json")


def test_the_main_run_is_reproduced_by_a_short_rerun(main_run: dict[str, Any]) -> None:
    """One timed step at the stored shape: bytes and FLOPs exact, the peak within 3%."""
    config = _config(main_run)
    again = run_bench(config, main_run["batch_size"], main_run["seq_len"], steps=1, warmup=0)
    for name in CONFIGURATIONS:
        stored, fresh = main_run["results"][name], again["results"][name]
        for category in (*STATIC_CATEGORIES, "activations"):
            assert fresh["memory"][category] == stored["memory"][category], (name, category)
        assert fresh["flops_by_op"] == stored["flops_by_op"], name
        assert fresh["memory"]["peak"] == pytest.approx(stored["memory"]["peak"], rel=0.03), name
    assert main_run["flop_check"]["matches"] is True
    assert main_run["steps"] >= 8  # the rule: minimums over at least 8 interleaved steps


def test_the_lean_run_agrees_with_the_analytic_models(lean_run: dict[str, Any]) -> None:
    config = _config(lean_run)
    batch, seq = lean_run["batch_size"], lean_run["seq_len"]
    options = LeanOptions(**lean_run["lean"])
    assert options == LEAN_EXPERT and lean_run["fused_adamw"] is True
    check = lean_run["flop_check"]
    assert check["matches"] is True
    assert check["expected"] == flop_saving(config, batch, seq, options)
    for name, frozen in (("expert", True), ("full", False)):
        row = lean_run["results"][name]
        assert row["memory"]["static"] == memory_budget(config, batch, seq, frozen=frozen).static
        predicted = peak_budget(config, batch, seq, frozen, options, "adamw-fused").peak
        assert row["memory"]["peak"] == pytest.approx(predicted, rel=0.05), name


def test_the_ladder_agrees_with_the_analytic_models(ladder: dict[str, Any]) -> None:
    config = _config(ladder)
    batch, seq = ladder["batch_size"], ladder["seq_len"]
    rungs = lean_ladder()
    for training, stored_rungs in ladder["rungs"].items():
        frozen = training == "expert"
        floor = memory_budget(config, batch, seq, frozen=frozen).static
        assert ladder["static_floor"][training] == floor
        assert [r["label"] for r in stored_rungs] == [r.label for r in rungs]
        # Every rung after the first runs the same micro-batches in the same order, so it
        # draws the same dropout masks and takes the same first step. The plain step draws
        # its masks for the whole batch at once, so with dropout its loss differs slightly.
        plain, micro = stored_rungs[0]["first_loss"], stored_rungs[1]["first_loss"]
        assert plain == pytest.approx(micro, rel=1e-3)
        for rung, stored in zip(rungs, stored_rungs, strict=True):
            if stored is not stored_rungs[0]:
                assert stored["first_loss"] == pytest.approx(micro, rel=1e-5), stored["label"]
            assert stored["peak"] > floor
            if rung.modelled:
                predicted = peak_budget(
                    config, batch, seq, frozen, rung.options, rung.optimizer,
                    *TRAINING_SETTINGS[training],
                )  # fmt: skip
                assert stored["analytic_peak"] == predicted.peak, stored["label"]
                assert stored["peak"] == pytest.approx(predicted.peak, rel=0.05), stored["label"]
            else:
                assert stored["analytic_peak"] is None

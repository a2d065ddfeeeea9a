"""Chapter 5's layout study: runs per seed, stores per-seed losses, recomputes verdicts."""

import json

import matplotlib

matplotlib.use("Agg")

import pytest
import torch

from modularforge.chapters.ch05_layout_study import (
    STUDY_ARMS,
    LayoutStudySettings,
    arm_spreads,
    layout_verdict,
    main,
    plot_layout_study,
    read_study,
    run_layout_study,
    study_verdicts,
    write_study,
)
from modularforge.repo_paths import BOOK_DATA_DIR
from modularforge.training.data import DomainData, load_mixed

STORED = BOOK_DATA_DIR / "layout-study-tiny.json"


@pytest.fixture(scope="module")
def small_mixed() -> DomainData:
    """A cut of the real mixture: three domains, short validation parts of unequal length."""
    full = load_mixed(2048)
    parts = {name: val[: 400 + 100 * i] for i, (name, val) in enumerate(full.val_parts.items())}
    return DomainData("mixed", full.train[:30_000], torch.cat(list(parts.values())), parts)


SMALL = LayoutStudySettings(
    n_layers=2, seeds=(0, 1, 2), phase1_steps=2, expert_steps=2, batch_size=4, seq_len=16,
    eval_every=2,
)  # fmt: skip


@pytest.fixture(scope="module")
def small_study(small_mixed) -> dict:
    return run_layout_study(SMALL, data=small_mixed)


def test_the_study_runs_every_arm_for_every_seed(small_study):
    assert small_study["settings"]["seeds"] == [0, 1, 2]
    assert small_study["config"]["n_layers"] == 2
    assert list(small_study["arms"]) == list(STUDY_ARMS)
    for arm in STUDY_ARMS:
        entry = small_study["arms"][arm]
        assert len(entry["val_loss"]) == 3
        assert [c["seed"] for c in entry["curves"]] == [0, 1, 2]
        assert all(
            c["val_loss"][-1] == v for c, v in zip(entry["curves"], entry["val_loss"], strict=True)
        )
    params = {arm: small_study["arms"][arm]["trainable_parameters"] for arm in STUDY_ARMS}
    assert params["per_layer"] == 2 * params["shared"] and params["zero_ffn"] == 0
    assert abs(params["shared_wide"] - params["per_layer"]) < 0.01 * params["per_layer"]
    # different seeds train different trunks, so the per-seed losses differ
    assert len(set(small_study["arms"]["per_layer"]["val_loss"])) == 3
    assert len(small_study["phase1_val_loss"]) == 3


def test_the_study_scores_balanced_validation_over_every_window(small_study, small_mixed):
    validation = small_study["validation"]
    assert validation["domains"] == ["english", "licenses", "python"]
    # the shortest part (400 tokens) holds 24 windows of 16 tokens: 24 from every domain
    assert validation["windows"] == 3 * ((400 - 1) // 16)
    assert validation["tokens"] == validation["windows"] * 16
    assert validation["batches"] == -(-validation["windows"] // 4)


def test_the_study_is_deterministic(small_study, small_mixed):
    again = run_layout_study(SMALL, data=small_mixed)
    assert again["arms"] == small_study["arms"]


def test_study_round_trips_through_json_with_its_command(small_study, tmp_path):
    path = write_study(small_study, tmp_path / "study.json", "python -m x --json study.json")
    loaded = read_study(path)
    assert loaded["command"] == "python -m x --json study.json"
    assert arm_spreads(loaded)["shared"].values == tuple(small_study["arms"]["shared"]["val_loss"])
    with pytest.raises(FileNotFoundError, match="layout_study"):
        read_study(tmp_path / "missing.json")
    (tmp_path / "other.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="not a layout study"):
        read_study(tmp_path / "other.json")


def test_settings_and_cli_refuse_fewer_than_three_seeds(capsys):
    with pytest.raises(ValueError, match=">= 3 distinct seeds"):
        LayoutStudySettings(seeds=(0, 1))
    with pytest.raises(ValueError, match=">= 3 distinct seeds"):
        LayoutStudySettings(seeds=(0, 0, 1))
    assert main(["--json", "unused.json", "--seeds", "0", "1"]) == 2
    assert ">= 3 distinct seeds" in capsys.readouterr().err


def _study(**losses) -> dict:
    arms = {arm: {"label": arm, "val_loss": list(v), "trainable_parameters": 1}
            for arm, v in losses.items()}  # fmt: skip
    return {"format": "modularforge-layout-study", "settings": {"seeds": [0, 1, 2]}, "arms": arms}


ZERO = (6.0, 6.1, 6.2)


@pytest.mark.parametrize(
    ("per_layer", "shared", "wide", "verdict", "versus_shared", "versus_wide"),
    [
        ((5.0, 5.1, 5.2), (5.3, 5.4, 5.5), (5.3, 5.4, 5.5), "holds", "lower", "lower"),
        ((5.0, 5.1, 5.2), (5.3, 5.4, 5.5), (4.6, 4.7, 4.8), "holds with a correction",
         "lower", "higher"),
        # the negative control: mean gap 0.03 nats, but the ranges overlap
        ((5.00, 5.02, 5.07), (5.04, 5.05, 5.09), (5.3, 5.4, 5.5), "inconclusive",
         "inconclusive", "lower"),
        ((5.6, 5.7, 5.8), (5.3, 5.4, 5.5), (5.3, 5.4, 5.5), "does not hold", "higher", "higher"),
    ],
)  # fmt: skip
def test_layout_verdict_follows_the_per_seed_numbers(
    per_layer, shared, wide, verdict, versus_shared, versus_wide
):
    study = _study(per_layer=per_layer, shared=shared, shared_wide=wide, zero_ffn=ZERO)
    result = layout_verdict(study)
    assert (result.verdict, result.versus_shared, result.versus_wide) == (
        verdict,
        versus_shared,
        versus_wide,
    )
    assert result.capacity == "lower" and result.reason
    assert study_verdicts(study)[("shared", "zero_ffn")] == "lower"


def test_plot_shows_every_seed_and_each_arms_range(small_study):
    from matplotlib.collections import LineCollection, PathCollection

    ax = plot_layout_study(small_study)
    points = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert len(points) == 3 * len(STUDY_ARMS)  # one dot per seed and arm
    plotted = sorted(float(c.get_offsets()[0, 1]) for c in points)
    stored = sorted(v for arm in STUDY_ARMS for v in small_study["arms"][arm]["val_loss"])
    assert plotted == pytest.approx(stored)
    bars = [c for c in ax.collections if isinstance(c, LineCollection)]
    assert len(bars) == 2 * len(STUDY_ARMS)  # a min-max bar and a mean tick per arm
    assert "nats" in ax.get_ylabel()
    assert len(plot_layout_study(small_study, arms=["per_layer"]).get_xticks()) == 1
    joined = plot_layout_study(small_study, arms=["per_layer", "shared"], connect_seeds=True)
    lines = joined.get_lines()
    assert len(lines) == 3  # one dotted line per seed
    assert list(lines[1].get_ydata()) == [
        small_study["arms"]["per_layer"]["val_loss"][1],
        small_study["arms"]["shared"]["val_loss"][1],
    ]


@pytest.mark.skipif(not STORED.exists(), reason="run the layout study first (make measurements)")
def test_the_stored_study_is_the_one_the_chapter_describes():
    study = read_study(STORED)
    assert len(study["settings"]["seeds"]) >= 3 and study["config"]["n_layers"] == 4
    assert study["command"].startswith("python -m modularforge.chapters.ch05_layout_study")
    assert study["validation"]["kind"].startswith("balanced mixed")
    windows = study["validation"]["windows"]
    assert windows % len(study["validation"]["domains"]) == 0
    for arm in STUDY_ARMS:
        assert len(study["arms"][arm]["val_loss"]) == len(study["settings"]["seeds"])
    assert layout_verdict(study).verdict in {
        "holds", "holds with a correction", "inconclusive", "does not hold"
    }  # fmt: skip

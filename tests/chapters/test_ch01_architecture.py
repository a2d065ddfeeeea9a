"""The architecture chapter's helpers: live counts, forward order, colours from requires_grad."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402

from modularforge.chapters.ch01_architecture import (  # noqa: E402
    FROZEN_COLOR,
    TRAINABLE_COLOR,
    component_rows,
    draw_architecture,
    format_comparison,
    format_table,
    grouped_rows,
    plot_parameter_bars,
    totals,
    traced_forward_order,
)
from modularforge.measure.memory import parameter_counts  # noqa: E402
from modularforge.measure.text_table import TABLE_WIDTH
from modularforge.model.config import ModelConfig  # noqa: E402
from modularforge.model.shared import SharedComponents  # noqa: E402
from modularforge.model.trainer_model import ModuleTrainerModel  # noqa: E402


def make_model(config: ModelConfig, frozen: bool = True) -> ModuleTrainerModel:
    torch.manual_seed(0)
    shared = SharedComponents(config)
    if frozen:
        shared.freeze()
    return ModuleTrainerModel(shared, config, warn_if_unfrozen=False)


@pytest.fixture(scope="module")
def seed_model() -> ModuleTrainerModel:
    return make_model(ModelConfig.seed())


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_seed_counts_match_the_hand_count(seed_model: ModuleTrainerModel) -> None:
    t = totals(component_rows(seed_model))
    assert t == {"shared": 12_596_224, "expert": 8_402_944, "all": 20_999_168}


def test_rows_sum_to_the_model_total(seed_model: ModuleTrainerModel) -> None:
    rows = component_rows(seed_model)
    assert sum(r.params for r in rows) == sum(p.numel() for p in seed_model.parameters())


def test_rows_are_in_forward_order(seed_model: ModuleTrainerModel) -> None:
    names = [r.name for r in component_rows(seed_model)]
    assert names == [
        "token embedding + positions",
        "attention 0",
        "expert FFN 0",
        "attention 1",
        "expert FFN 1",
        "attention 2",
        "expert FFN 2",
        "attention 3",
        "expert FFN 3",
        "output norm",
        "LM head (tied)",
    ]
    assert traced_forward_order(seed_model)[:3] == [
        "shared.token_embedding",
        "shared.attention.0",
        "experts.0",
    ]


def test_tracing_leaves_no_hooks_and_no_grads(seed_model: ModuleTrainerModel) -> None:
    traced_forward_order(seed_model)
    assert all(not m._forward_hooks for m in seed_model.modules())
    assert all(p.grad is None for p in seed_model.parameters())


def test_tied_head_owns_nothing_and_points_at_the_embedding(
    seed_model: ModuleTrainerModel,
) -> None:
    head = component_rows(seed_model)[-1]
    assert head.params == 0
    assert head.tied_to == "token embedding + positions"
    assert seed_model.shared.lm_head_weight is seed_model.shared.token_embedding.weight


def test_live_counts_equal_the_analytic_ones() -> None:
    for config in (ModelConfig.seed(), ModelConfig.tiny()):
        t = totals(component_rows(make_model(config)))
        counts = parameter_counts(config)
        assert (t["shared"], t["expert"], t["all"]) == (counts.shared, counts.expert, counts.total)


def test_trainable_flags_follow_requires_grad() -> None:
    config = ModelConfig.tiny()
    frozen = component_rows(make_model(config, frozen=True))
    assert [r.trainable for r in frozen] == [r.role == "expert" for r in frozen]
    unfrozen = component_rows(make_model(config, frozen=False))
    assert all(r.trainable for r in unfrozen)
    # Freezing one expert layer by hand shows up in its row only.
    model = make_model(config)
    model.experts[1].requires_grad_(False)
    flags = {r.name: r.trainable for r in component_rows(model)}
    assert flags["expert FFN 0"] and not flags["expert FFN 1"]


def test_grouped_rows_and_table(seed_model: ModuleTrainerModel) -> None:
    rows = component_rows(seed_model)
    grouped = {g.label: g for g in grouped_rows(rows)}
    assert grouped["attention block"].per_copy == 1_051_648
    assert grouped["attention block"].copies == 4
    assert grouped["expert FFN"].total == 8_402_944
    assert [g.role for g in grouped_rows(rows)][-1] == "expert"
    table = format_table(rows)
    assert "12,596,224" in table and "8,402,944" in table and "20,999,168" in table
    assert "8,388,608" in table
    assert max(len(line) for line in table.splitlines()) <= TABLE_WIDTH


def test_comparison_flags_a_mismatch(seed_model: ModuleTrainerModel) -> None:
    rows = component_rows(seed_model)
    good = format_comparison(rows, {"shared": 12_596_224, "expert": 8_402_944, "all": 20_999_168})
    assert "False" not in good
    bad = format_comparison(rows, {"shared": 18_000_000, "expert": 8_402_944, "all": 26_402_944})
    assert bad.count("False") == 2


def box_colors(ax) -> dict[str, str]:
    return {
        p.get_gid().removeprefix("box:"): to_hex(p.get_facecolor())
        for p in ax.patches
        if (p.get_gid() or "").startswith("box:")
    }


def test_diagram_has_one_labelled_box_per_component(seed_model: ModuleTrainerModel) -> None:
    rows = component_rows(seed_model)
    ax = draw_architecture(seed_model)
    colors = box_colors(ax)
    assert list(colors) == [r.name for r in rows]
    labels = {
        t.get_gid().removeprefix("label:"): t.get_text()
        for t in ax.texts
        if (t.get_gid() or "").startswith("label:")
    }
    assert len(labels) == len(rows)
    for row in rows:
        assert f"{row.params:,} params" in labels[row.name]
    assert "2,100,736 params" in labels["expert FFN 0"]
    assert "0 params" in labels["LM head (tied)"]
    assert colors["expert FFN 0"] == TRAINABLE_COLOR
    assert colors["attention 0"] == FROZEN_COLOR


def test_unfrozen_trunk_draws_differently() -> None:
    config = ModelConfig.tiny()
    frozen = box_colors(draw_architecture(make_model(config, frozen=True)))
    unfrozen = box_colors(draw_architecture(make_model(config, frozen=False)))
    assert frozen["attention 0"] == FROZEN_COLOR
    assert unfrozen["attention 0"] == TRAINABLE_COLOR
    assert set(unfrozen.values()) == {TRAINABLE_COLOR}


def test_parameter_bars(seed_model: ModuleTrainerModel) -> None:
    ax = plot_parameter_bars(component_rows(seed_model))
    widths = sorted(round(bar.get_width() * 1e6) for bar in ax.patches)
    assert widths == [0, 1_024, 4_206_592, 8_388_608, 8_402_944]
    assert ax.get_xlabel() == "parameters (millions)"


def _covered_by_legend(ax) -> list[str]:
    """What the legend's box overlaps: bars (by width) and texts (by their words)."""
    ax.figure.canvas.draw()
    renderer = ax.figure.canvas.get_renderer()
    legend = ax.get_legend().get_window_extent(renderer)
    covered = [
        f"bar {bar.get_width():.3f}"
        for bar in ax.patches
        if legend.overlaps(bar.get_window_extent(renderer))
    ]
    covered += [
        text.get_text() for text in ax.texts if legend.overlaps(text.get_window_extent(renderer))
    ]
    return covered


def test_parameter_bars_legend_covers_no_bar_or_count(seed_model: ModuleTrainerModel) -> None:
    ax = plot_parameter_bars(component_rows(seed_model))
    assert _covered_by_legend(ax) == []
    # The legend is drawn whole: inside the figure, though outside the axes.
    renderer = ax.figure.canvas.get_renderer()
    legend = ax.get_legend().get_window_extent(renderer)
    figure = ax.figure.bbox
    assert figure.x0 <= legend.x0 and legend.x1 <= figure.x1
    assert figure.y0 <= legend.y0 and legend.y1 <= figure.y1
    # Negative control: the old place, inside the lower right corner, covers the
    # expert's count, so the check can fail.
    ax.get_legend().set_loc("lower right")
    ax.get_legend().set_bbox_to_anchor(None)
    assert "8,402,944" in _covered_by_legend(ax)

"""The memory chapter's tables, charts and explorer show memory_budget's numbers."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from modularforge import ModelConfig, memory_budget  # noqa: E402
from modularforge.measure.memory import MB  # noqa: E402
from modularforge.plots import memory_plots as mp  # noqa: E402

SEED = ModelConfig.seed()


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def by_first_column(rows):
    first = next(iter(rows[0]))
    return {row[first]: row for row in rows}


def test_doc_vs_model_rows_carry_the_documents_and_the_models_figures():
    rows = by_first_column(mp.doc_vs_model_rows(SEED))
    assert rows["shared (frozen)"]["doc params"] == 18_000_000
    assert rows["shared (frozen)"]["model params"] == 12_596_224
    assert rows["shared (frozen)"]["model MB"] == pytest.approx(50.384896)
    assert rows["expert (trainable)"]["model params"] == 8_402_944
    assert rows["AdamW states (2 per param)"]["model MB"] == pytest.approx(
        (2 * 8_402_944 * 4 + 24 * 4) / MB
    )
    assert rows["total (static)"]["doc MB"] == 205
    assert round(rows["total (static)"]["model MB"], 1) == 184.8


def test_the_documents_own_lines_add_up_to_205_and_its_sentence_to_421_not_516():
    assert mp.doc_static_total_mb() == 205
    assert mp.doc_unfrozen_by_its_own_sentence_mb() == 421


def test_shared_count_readings():
    rows = mp.shared_count_readings(SEED)
    params = [r["params"] for r in rows]
    assert params[:4] == [12_596_224, 12_596_224 + 8_388_608, 20_984_832 + 262_144, 20_999_168]
    # None of the architectural readings gives 18M; only the solved-for ones do.
    assert all(p != 18_000_000 for p in params[:4])
    assert "9.14 layers" in rows[4]["reading"]
    assert "26,938" in rows[5]["reading"]


def test_unfrozen_readings():
    rows = mp.unfrozen_readings(SEED)
    totals = [r["unfrozen MB"] for r in rows]
    assert totals[0] == 421
    assert totals[1] == pytest.approx(422.4)
    assert totals[2] == 521
    assert round(totals[-1], 1) == 336.0
    assert round(rows[-1]["ratio"], 2) == 1.82
    assert round(rows[0]["ratio"], 2) == 2.05
    assert "23.85M" in rows[4]["reading"]


def test_budget_table_rows_are_memory_budgets_values():
    rows = by_first_column(mp.budget_table(SEED, 16, 512))
    frozen = memory_budget(SEED, 16, 512, frozen=True)
    unfrozen = memory_budget(SEED, 16, 512, frozen=False)
    assert rows["params (frozen)"]["frozen MB"] == frozen.params_frozen / MB
    assert rows["AdamW states"]["unfrozen MB"] == unfrozen.optimizer_state / MB
    assert rows["activations (saved for backward)"]["frozen MB"] == frozen.activations / MB
    assert rows["static total"]["unfrozen MB"] == pytest.approx(336.0, abs=0.05)
    assert rows["total"]["frozen MB"] == frozen.total / MB


def test_format_table_aligns_and_formats():
    text = mp.format_table(
        [{"name": "a", "n": 1234567, "x": 1.25}, {"name": "bb", "n": 5, "x": None}],
        decimals={"x": 2},
    )
    lines = text.splitlines()
    assert lines[0].split() == ["name", "n", "x"]
    assert lines[2].split() == ["a", "1,234,567", "1.25"]
    assert lines[3].rstrip().endswith("5")
    with pytest.raises(ValueError, match="at least one row"):
        mp.format_table([])


def test_shrink_rows_divide_activations_by_the_accumulation_steps():
    options = [
        mp.ShrinkOption("one step", 16, 512),
        mp.ShrinkOption("micro-batches", 1, 512, accumulation_steps=16),
        mp.ShrinkOption("chunked", 16, 512, drop_loss_term=True),
    ]
    rows = mp.shrink_rows(SEED, options)
    assert [r["tokens/step"] for r in rows] == [8192, 8192, 8192]
    full = memory_budget(SEED, 16, 512)
    assert rows[0]["activations MB"] == full.activations / MB
    assert rows[1]["activations MB"] == memory_budget(SEED, 1, 512).activations / MB
    loss_term = full.details["loss (log-softmax over vocab)"]
    assert loss_term >= 16 * 512 * 16384 * 4
    assert rows[2]["activations MB"] == pytest.approx((full.activations - loss_term) / MB)
    assert rows[0]["static MB"] == rows[1]["static MB"] == full.static / MB


@pytest.mark.parametrize("frozen", [True, False])
def test_measured_step_matches_the_analytic_rows(frozen):
    config = ModelConfig.tiny()
    measured = mp.measure_step(config, 2, 32, frozen=frozen)
    analytic = memory_budget(config, 2, 32, frozen=frozen)
    rows = mp.analytic_vs_measured_rows(analytic, measured)
    static = [r for r in rows if r["category"] != "activations (saved for backward)"][:4]
    assert [r["difference"] for r in static] == [0, 0, 0, 0]
    assert rows[4]["measured bytes"] == pytest.approx(analytic.activations, rel=0.05)
    assert rows[-1]["category"] == "peak (MB, rounded)"
    assert rows[-1]["measured bytes"] == round(measured.peak / MB)
    assert "tensor storages summed" in rows[-1]["measured by"]
    assert mp.peak_method("cuda") == "torch.cuda.max_memory_allocated"


def test_bar_heights_equal_memory_budget_and_reference_lines_sit_at_the_documents_figures():
    ax = mp.plot_budget_bars(SEED, 1, 128)
    heights = mp.bar_heights(ax)
    expected = []
    for frozen in (True, False):
        budget = memory_budget(SEED, 1, 128, frozen=frozen)
        expected += [getattr(budget, attr) / MB for attr, _, _ in mp.CATEGORIES]
    np.testing.assert_allclose(heights, expected)
    lines = {line.get_label(): line.get_ydata()[0] for line in ax.get_lines()}
    assert lines == {"design doc: 205 MB budget": 205, "design doc: 516 MB unfrozen": 516}
    # The stacked bars' tops are the totals.
    assert heights[:5].sum() == pytest.approx(memory_budget(SEED, 1, 128).total / MB)


def test_plot_budget_bars_rejects_unknown_modes():
    with pytest.raises(ValueError, match="modes must be"):
        mp.plot_budget_bars(SEED, 1, 8, modes=("half-frozen",))


def test_activation_growth_plots_memory_budgets_activations():
    axes = mp.plot_activation_growth(SEED, batch_sizes=(1, 2, 4), seq_lens=(64, 128))
    frozen_line = axes[0].get_lines()[0]
    assert list(frozen_line.get_xdata()) == [1, 2, 4]
    assert list(frozen_line.get_ydata()) == [
        memory_budget(SEED, b, 512).activations / MB for b in (1, 2, 4)
    ]
    unfrozen_seq = [line for line in axes[1].get_lines() if line.get_label().startswith("act")][1]
    assert list(unfrozen_seq.get_ydata()) == [
        memory_budget(SEED, 16, t, frozen=False).activations / MB for t in (64, 128)
    ]


def test_activation_components_puts_the_loss_term_on_top():
    ax = mp.plot_activation_components(SEED, 16, 512)
    widths = {p.get_y(): p.get_width() for p in ax.patches}
    assert max(widths.values()) == pytest.approx(
        memory_budget(SEED, 16, 512).details["loss (log-softmax over vocab)"] / MB
    )


def test_explorer_builds_and_redraws():
    shown = []
    widget = mp.memory_explorer(show=shown.append)
    assert widget.state["draws"] == 1  # interactive draws once on construction
    controls = {child.description: child for child in widget.children[:-1]}
    controls["d_ff"].value = 1024  # observing the slider redraws
    controls["trunk"].value = "frozen"
    widget.update()
    assert widget.state["draws"] >= 3
    ax = widget.state["figure"].axes[0]
    config = mp.explorer_config(512, 4, 1024, 16384, 128)
    budget = memory_budget(config, 1, 128, frozen=True)
    np.testing.assert_allclose(
        mp.bar_heights(ax), [getattr(budget, a) / MB for a, _, _ in mp.CATEGORIES]
    )
    assert shown[-1] is widget.state["figure"]


@pytest.mark.parametrize("d_model", range(64, 1025, 64))
def test_every_d_model_on_the_slider_gives_a_valid_config(d_model):
    config = mp.explorer_config(d_model, 2, 256, 1024, 1024)
    assert config.head_dim * config.n_heads == d_model
    assert config.max_seq_len == 1024


def test_what_18m_and_516_mb_would_take():
    layers = mp.layers_for_doc_shared(SEED)
    assert layers == pytest.approx((18_000_000 - 8_388_608 - 1_024) / 1_051_648)
    assert round(layers, 2) == 9.14
    assert round(mp.vocab_for_doc_shared(SEED)) == 26_938
    assert mp.trunk_for_doc_unfrozen() == pytest.approx(516e6 / 16 - 8_400_000)


# --- Making 205 MB real ---------------------------------------------------------------


def test_peak_bars_are_peak_budgets_values_with_the_measured_lean_peaks():
    from modularforge.lean.step import LEAN_EXPERT
    from modularforge.measure.peak import PLAIN, peak_budget

    bars = mp.peak_bars(SEED, {True: 206_170_000, False: 389_555_000})
    assert [b.label for b in bars] == [
        "plain, one expert",
        "plain, full training",
        "lean, one expert",
        "lean, full training",
        "plain, full training, math path",
        "plain, full training, math path + trunk dropout",
    ]
    assert bars[0].analytic == peak_budget(SEED, 16, 512, True, PLAIN, "adamw").peak
    assert bars[1].analytic == peak_budget(SEED, 16, 512, False, PLAIN, "adamw").peak
    assert bars[2].analytic == peak_budget(SEED, 16, 512, True, LEAN_EXPERT, "adamw-fused").peak
    assert [b.measured for b in bars] == [None, None, 206_170_000, 389_555_000, None, None]
    # The extra bars add the math path, then trunk dropout, to the full step.
    assert bars[4].analytic == peak_budget(SEED, 16, 512, False, PLAIN, "adamw", "math").peak
    assert bars[1].analytic < bars[4].analytic < bars[5].analytic
    # The plain step is over ten times the budget; the lean expert step lands on it.
    assert bars[0].analytic > 10 * 205 * MB
    assert round(bars[2].analytic / MB, 1) == 206.9
    assert round(bars[3].analytic / MB, 1) == 386.3
    assert bars[0].moment == "loss backward"


def test_peak_rows_round_measured_peaks_and_compare_with_205_mb():
    bars = [mp.PeakBar("a", 410_000_000), mp.PeakBar("b", 206_000_000, 205_449_999, "m")]
    rows = mp.peak_rows(bars)
    assert rows[0]["measured MB"] is None
    assert rows[0]["vs 205 MB"] == pytest.approx(2.0)
    assert rows[1]["measured MB"] == 205 and isinstance(rows[1]["measured MB"], int)
    assert rows[1]["analytic MB"] == 206.0
    assert rows[1]["vs 205 MB"] == pytest.approx(205.449999 / 205)
    assert rows[1]["peak moment"] == "m"


def test_plot_peak_bars_draws_analytic_then_measured_against_the_documents_lines():
    bars = [mp.PeakBar("plain", 3_000_000_000), mp.PeakBar("lean", 207_000_000, 206_000_000)]
    ax = mp.plot_peak_bars(bars)
    np.testing.assert_allclose(mp.bar_heights(ax), [3000.0, 207.0, 206.0])
    xs = [p.get_x() + p.get_width() / 2 for p in ax.patches]
    np.testing.assert_allclose(xs, [0.0, 1 - 0.19, 1 + 0.19])
    lines = {line.get_label(): line.get_ydata()[0] for line in ax.get_lines()}
    assert lines == {"design doc: 205 MB budget": 205, "design doc: 516 MB unfrozen": 516}
    assert ax.get_yscale() == "log"
    assert [t.get_text() for t in ax.texts] == ["3,000.0", "207.0", "206.0"]
    assert mp.plot_peak_bars(bars, log_scale=False).get_yscale() == "linear"
    with pytest.raises(ValueError, match="at least one"):
        mp.plot_peak_bars([])

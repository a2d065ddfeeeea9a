"""Text size on the page follows from figure width, dpi and font size."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from modularforge.plots.figure_text import COLUMN_PX, MIN_TEXT_PX, smallest_text_px  # noqa: E402


@pytest.mark.parametrize("fontsize", [6, 10, 14])
def test_wide_figure_text_scales_with_column_width(fontsize):
    fig, ax = plt.subplots(figsize=(14, 3), dpi=100)
    ax.set_axis_off()
    fig.text(0.01, 0.5, "label", fontsize=fontsize)
    fig.text(0.95, 0.5, "edge", fontsize=20)
    width_px = fig.get_tightbbox(fig.canvas.get_renderer()).width * 100
    expected = fontsize / 72 * 100 * COLUMN_PX / width_px
    assert smallest_text_px(fig) == pytest.approx(expected)
    plt.close(fig)


def test_negative_control_tiny_font_on_a_wide_figure_fails_the_rule():
    fig, ax = plt.subplots(figsize=(16, 4), dpi=100)
    ax.set_title("tiny", fontsize=6)
    ax.set_xlabel("x (units)", fontsize=6)
    assert smallest_text_px(fig) < MIN_TEXT_PX
    plt.close(fig)


def test_narrow_figure_is_not_enlarged():
    fig, ax = plt.subplots(figsize=(4, 3), dpi=100)
    ax.set_title("t", fontsize=10)
    ax.tick_params(labelsize=10)
    assert smallest_text_px(fig) == pytest.approx(10 / 72 * 100)
    plt.close(fig)


def test_figure_without_text_is_refused():
    fig = plt.figure()
    with pytest.raises(ValueError, match="no visible text"):
        smallest_text_px(fig)
    plt.close(fig)


def test_the_activation_growth_pair_is_readable_at_the_column_width():
    """Chapter 6b's pair: side by side (11 in wide) its legends were about 7 px."""
    from modularforge.model.config import ModelConfig
    from modularforge.plots import memory_plots as mp

    axes = mp.plot_activation_growth(
        ModelConfig.preset("seed"), batch_sizes=(1, 4, 16), seq_len_for_batch=512, batch_for_seq=16
    )
    fig = axes[0].figure
    fig.tight_layout()
    assert smallest_text_px(fig) >= MIN_TEXT_PX
    plt.close(fig)


def test_the_routing_panels_are_readable_at_the_column_width():
    """Chapter 9's per-layer routing panels, at the tiny preset's two layers."""
    import torch

    from modularforge.training.evaluate import plot_routing_by_layer

    shares = torch.tensor([[0.5, 0.3, 0.2], [0.2, 0.2, 0.6]])
    fractions = {"english": shares, "licenses": shares.flip(1), "python": shares}
    fig = plot_routing_by_layer(fractions, ["english", "licenses", "python"], title="routing")
    assert smallest_text_px(fig) >= MIN_TEXT_PX
    plt.close(fig)

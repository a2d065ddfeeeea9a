"""Charts and a widget for the memory chapters (02_memory_budget, 06b_making_205_mb_real).

The chapters check the design document's "Memory Budget Proof" line by line.
Everything they print or draw comes from this module or the three it gathers,
so that a notebook stays a sequence of short calls (`mp.<name>`) and every
figure can be tested:

* `memory_format`: units, categories, the document's reference lines, `format_table`.
* `memory_tables`: the document's table beside the model's (`doc_vs_model_rows`),
  and the readings that could have produced its "18M" and "516 MB".
* `peak_plots`: one real training step against the analytic budget
  (`measure_step`, `analytic_vs_measured_rows`), and the peak of the plain and
  the lean step against the document's figures (`peak_bars`, `plot_peak_bars`).
* here: `plot_budget_bars`, `plot_activation_growth` and
  `plot_activation_components` draw the evidence; `memory_explorer` is the
  interactive version.

All sizes are decimal megabytes (1 MB = 10**6 bytes), the document's unit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from modularforge.measure.memory import (
    activation_breakdown,
    memory_budget,
    parameter_counts,
)
from modularforge.measure.memory_format import (  # noqa: F401  (re-exported: the chapters call mp.<name>)
    ADAMW_FP32_BYTES_PER_TRAINED_PARAM,
    CATEGORIES,
    DOC_UNFROZEN_ADAMW_MB,
    DOC_UNFROZEN_GRADS_MB,
    MODES,
    REFERENCE_LINES,
    _stack_bar,
    bar_heights,
    format_table,
    mb,
)
from modularforge.measure.memory_tables import (  # noqa: F401  (re-exported: the chapters call mp.<name>)
    budget_table,
    doc_static_total_mb,
    doc_unfrozen_by_its_own_sentence_mb,
    doc_vs_model_rows,
    layers_for_doc_shared,
    shared_count_readings,
    trunk_for_doc_unfrozen,
    unfrozen_readings,
    vocab_for_doc_shared,
)
from modularforge.model.config import ModelConfig
from modularforge.plots.peak_plots import (  # noqa: F401  (re-exported: the chapters call mp.<name>)
    PeakBar,
    ShrinkOption,
    analytic_vs_measured_rows,
    measure_step,
    peak_bars,
    peak_method,
    peak_rows,
    plot_peak_bars,
    shrink_rows,
)

# --- Charts ----------------------------------------------------------------------------


def plot_budget_bars(
    config: ModelConfig,
    batch_size: int,
    seq_len: int,
    ax: Axes | None = None,
    modes: Sequence[str] = ("frozen", "unfrozen"),
    optimizer: str = "adamw",
    reference_lines: bool = True,
    title: str | None = None,
) -> Axes:
    """Stacked bars, one per mode, by category, in MB, with the document's reference lines.

    The heights are `memory_budget`'s values; the lines sit at the document's
    205 MB budget and 516 MB unfrozen figures so the eye can compare.
    """
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise ValueError(f"modes must be a non-empty subset of {sorted(MODES)}, got {list(modes)}")
    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 4.5))
    for i, mode in enumerate(modes):
        budget = memory_budget(
            config, batch_size, seq_len, frozen=mode == "frozen", optimizer=optimizer
        )
        _stack_bar(ax, i, budget, 0.55, label=i == 0)
    if reference_lines:
        for value, label, style in REFERENCE_LINES:
            ax.axhline(value, color="black", linestyle=style, linewidth=1, label=label)
    ax.set_xticks(range(len(modes)), [MODES[m] for m in modes])
    ax.set_xlim(-0.6, len(modes) - 0.4)
    ax.set_ylabel("memory (MB, 1 MB = 10^6 bytes)")
    ax.set_title(
        title or f"One training step, batch {batch_size} x {seq_len} tokens, fp32, {optimizer}"
    )
    ax.legend(fontsize=8, loc="upper left")
    ax.set_ylim(0, ax.get_ylim()[1] * 1.15)
    return ax


def plot_activation_growth(
    config: ModelConfig,
    batch_sizes: Sequence[int] = (1, 2, 4, 8, 16),
    seq_lens: Sequence[int] = (64, 128, 192, 256, 320, 384, 448, 512),
    seq_len_for_batch: int = 512,
    batch_for_seq: int = 16,
    axes: Sequence[Axes] | None = None,
) -> Sequence[Axes]:
    """Activations against batch size (top) and against sequence length (bottom).

    Frozen and unfrozen on the same (fused) attention path, with each mode's
    static memory as a flat line: where a curve crosses its line, activations
    outweigh everything the document counts. A third curve is the trainer
    model's own default for an unfrozen trunk on CPU: trunk dropout on, which
    sends attention down the math path and keeps (B, heads, T, T) tensors, so
    that curve bends upwards in the right panel.
    """
    if axes is None:
        # Stacked, not side by side: at the book's 688 px column a side-by-side pair
        # shrank the legends' text to about 7 px.
        _, axes = plt.subplots(2, 1, figsize=(8, 8.4))
    curves = (
        ("frozen", True, {}, "#3182bd", "o"),
        ("unfrozen", False, {}, "#e6550d", "s"),
        (
            "unfrozen, math path + trunk dropout (CPU default)",
            False,
            {"attention_path": "math", "trunk_dropout": True},
            "#756bb1",
            "^",
        ),
    )
    sweeps = (
        (axes[0], batch_sizes, "batch size (sequences)", f"seq_len = {seq_len_for_batch}"),
        (axes[1], seq_lens, "sequence length (tokens)", f"batch = {batch_for_seq}"),
    )
    for panel, (ax, xs, xlabel, fixed) in enumerate(sweeps):
        for mode, frozen, settings, colour, marker in curves:
            budgets = [
                memory_budget(config, x, seq_len_for_batch, frozen=frozen, **settings)
                if panel == 0
                else memory_budget(config, batch_for_seq, x, frozen=frozen, **settings)
                for x in xs
            ]
            ys = [mb(b.activations) for b in budgets]
            ax.plot(xs, ys, color=colour, marker=marker,
                    label=f"activations, {MODES.get(mode, mode)}")  # fmt: skip
            if not settings:
                ax.axhline(
                    mb(budgets[0].static),
                    color=colour,
                    linestyle="--",
                    linewidth=1,
                    label=f"static memory, {MODES[mode]}",
                )
        ax.set_xlabel(xlabel)
        ax.set_ylabel("memory (MB)")
        ax.set_title(f"Activations vs {xlabel.split(' (')[0]} ({fixed})")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
    return axes


def plot_activation_components(
    config: ModelConfig, batch_size: int, seq_len: int, frozen: bool = True, ax: Axes | None = None
) -> Axes:
    """Horizontal bars: bytes each component saves for backward (`activation_breakdown`)."""
    parts = activation_breakdown(config, batch_size, seq_len, frozen=frozen)
    if ax is None:
        _, ax = plt.subplots(figsize=(7.5, 4.2))
    names = list(parts)[::-1]
    values = [mb(parts[n]) for n in names]
    colours = ["#e6550d" if n.startswith("loss") else "#74c476" for n in names]
    ax.barh(names, values, color=colours)
    for y, value in enumerate(values):
        ax.annotate(
            f"{value:,.1f}",
            (value, y),
            xytext=(3, 0),
            textcoords="offset points",
            va="center",
            fontsize=8,
        )
    ax.set_xlabel("saved for backward (MB)")
    ax.set_title(
        f"Saved for backward, {batch_size} x {seq_len}, {MODES['frozen' if frozen else 'unfrozen']}"
    )
    ax.set_xlim(0, max(values) * 1.18 if values else 1)
    return ax


# --- The explorer ----------------------------------------------------------------------

#: Slider ranges. d_model moves in steps of 64 and n_heads is fixed at 8, so
#: d_model / n_heads is always a whole head size (8, 16, ...).
EXPLORER_HEADS = 8
EXPLORER_DEFAULTS: dict[str, Any] = {
    "d_model": 512,
    "n_layers": 4,
    "d_ff": 2048,
    "vocab_size": 16384,
    "batch_size": 1,
    "seq_len": 128,
    "mode": "both",
}


def explorer_config(
    d_model: int, n_layers: int, d_ff: int, vocab_size: int, seq_len: int
) -> ModelConfig:
    """The seed config with the explorer's values; max_seq_len grows to fit seq_len."""
    return ModelConfig.seed().replace(
        d_model=d_model,
        n_heads=EXPLORER_HEADS,
        n_layers=n_layers,
        d_ff=d_ff,
        vocab_size=vocab_size,
        max_seq_len=max(seq_len, ModelConfig.seed().max_seq_len),
    )


def explorer_figure(
    d_model: int = 512,
    n_layers: int = 4,
    d_ff: int = 2048,
    vocab_size: int = 16384,
    batch_size: int = 1,
    seq_len: int = 128,
    mode: str = "both",
) -> Figure:
    """The explorer's chart for one setting of the sliders (usable without widgets)."""
    config = explorer_config(d_model, n_layers, d_ff, vocab_size, seq_len)
    modes = ("frozen", "unfrozen") if mode == "both" else (mode,)
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    counts = parameter_counts(config)
    plot_budget_bars(
        config,
        batch_size,
        seq_len,
        ax=ax,
        modes=modes,
        title=(
            f"d_model {d_model}, {n_layers} layers, d_ff {d_ff}, vocab {vocab_size:,}\n"
            f"shared {counts.shared / 1e6:.2f}M + expert {counts.expert / 1e6:.2f}M params, "
            f"batch {batch_size} x {seq_len}"
        ),
    )
    fig.tight_layout()
    return fig


def memory_explorer(show: Callable[[Figure], None] | None = None) -> Any:
    """Sliders for the model's shape and the batch, and a frozen/unfrozen toggle.

    Returns an `ipywidgets.interactive`; `.update()` redraws with the current
    values and `.state["figure"]` holds the figure drawn last (tests use both).
    `show` displays a figure; by default IPython's `display`, then the figure is
    closed so the inline backend doesn't draw it a second time.
    """
    import ipywidgets as widgets

    if show is None:
        from IPython.display import display

        show = display

    state: dict[str, Any] = {"figure": None, "draws": 0}

    def draw(**values: Any) -> None:
        fig = explorer_figure(**values)
        state["figure"] = fig
        state["draws"] += 1
        show(fig)
        plt.close(fig)

    d = EXPLORER_DEFAULTS
    slider = {"continuous_update": False, "style": {"description_width": "90px"}}
    widget = widgets.interactive(
        draw,
        d_model=widgets.IntSlider(
            d["d_model"], min=64, max=1024, step=64, description="d_model", **slider
        ),
        n_layers=widgets.IntSlider(d["n_layers"], min=1, max=24, description="n_layers", **slider),
        d_ff=widgets.IntSlider(
            d["d_ff"], min=256, max=8192, step=256, description="d_ff", **slider
        ),
        vocab_size=widgets.IntSlider(
            d["vocab_size"], min=1024, max=65536, step=1024, description="vocab", **slider
        ),
        batch_size=widgets.IntSlider(d["batch_size"], min=1, max=32, description="batch", **slider),
        seq_len=widgets.IntSlider(
            d["seq_len"], min=16, max=1024, step=16, description="seq_len", **slider
        ),
        mode=widgets.ToggleButtons(
            options=[("frozen", "frozen"), ("unfrozen", "unfrozen"), ("both", "both")],
            value=d["mode"],
            description="trunk",
        ),
    )
    widget.state = state
    return widget

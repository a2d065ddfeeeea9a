"""Tables, charts and a widget for the memory chapters (02_memory_budget, 06b_making_205_mb_real).

The chapter checks the design document's "Memory Budget Proof" line by line.
Everything it prints or draws comes from here, so that the notebook stays a
sequence of short calls and every figure can be tested:

* `doc_vs_model_rows` puts the document's table beside the one computed from
  `modularforge.memory.parameter_counts` and `memory_budget`.
* `shared_count_readings` and `unfrozen_readings` try the readings of the
  architecture that could have produced the document's "18M" and "516 MB".
* `measure_step` / `analytic_vs_measured_rows` run one real training step and
  compare it with the analytic budget, category by category.
* `plot_budget_bars`, `plot_activation_growth` and `plot_activation_components`
  draw the evidence; `memory_explorer` is the interactive version.
* `peak_bars`, `peak_rows` and `plot_peak_bars` put the peak of the plain and
  the lean training step (`modularforge.peak`) against the document's figures.

All sizes are decimal megabytes (1 MB = 10**6 bytes), the document's unit.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .config import ModelConfig
from .lean import LEAN_EXPERT, LeanOptions
from .memory import (
    DOC_ADAMW_MB,
    DOC_BUDGET_MB,
    DOC_EXPERT_MB,
    DOC_EXPERT_PARAMS,
    DOC_SHARED_MB,
    DOC_SHARED_PARAMS,
    DOC_UNFROZEN_MB,
    MB,
    MemoryBreakdown,
    activation_breakdown,
    check_step_settings,
    measure_training_step,
    memory_budget,
    parameter_counts,
)
from .peak import PLAIN, configure_trunk, peak_budget

#: Bytes per parameter when everything trains with AdamW in fp32:
#: weight 4 + gradient 4 + exp_avg 4 + exp_avg_sq 4.
ADAMW_FP32_BYTES_PER_TRAINED_PARAM = 16
#: The document's unfrozen extras, as its sentence states them: "gradients (72 MB)
#: and optimizer states (144 MB)".
DOC_UNFROZEN_GRADS_MB = 72
DOC_UNFROZEN_ADAMW_MB = 144

#: The five stacked categories, bottom to top: attribute of `MemoryBreakdown`,
#: legend label, colour. The order puts the static terms under the activations.
CATEGORIES: tuple[tuple[str, str, str], ...] = (
    ("params_frozen", "params (frozen)", "#9ecae1"),
    ("params_trainable", "params (trainable)", "#3182bd"),
    ("grads", "gradients", "#fd8d3c"),
    ("optimizer_state", "AdamW states", "#e6550d"),
    ("activations", "activations (saved for backward)", "#74c476"),
)

#: Labels of the two training modes compared throughout the chapter.
MODES = {"frozen": "shared trunk frozen", "unfrozen": "nothing frozen"}

REFERENCE_LINES: tuple[tuple[float, str, str], ...] = (
    (DOC_BUDGET_MB, f"design doc: {DOC_BUDGET_MB} MB budget", "--"),
    (DOC_UNFROZEN_MB, f"design doc: {DOC_UNFROZEN_MB} MB unfrozen", ":"),
)


def mb(n_bytes: float) -> float:
    """Decimal megabytes."""
    return n_bytes / MB


# --- Plain-text tables ---------------------------------------------------------------


def format_table(
    rows: Sequence[dict[str, Any]],
    columns: Sequence[str] | None = None,
    decimals: dict[str, int] | None = None,
) -> str:
    """A monospace table: header, rule, one line per row; numbers right-aligned.

    Floats get one decimal unless `decimals` names the column ({"ratio": 2}).

    Plain text on purpose: nbval compares it exactly, it needs no pandas, and it
    reads the same in Colab, in the terminal and on the rendered page.
    """
    if not rows:
        raise ValueError("format_table needs at least one row")
    columns = list(columns or rows[0].keys())

    decimals = decimals or {}

    def cell(value: Any, column: str) -> str:
        if isinstance(value, bool) or value is None:
            return "" if value is None else str(value)
        if isinstance(value, int):
            return f"{value:,}"
        if isinstance(value, float):
            text = f"{value:,.{decimals.get(column, 1)}f}"
            return text[1:] if text.startswith("-") and not text.strip("-0.,") else text  # no -0.0
        return str(value)

    cells = [[cell(row.get(c), c) for c in columns] for row in rows]
    numeric = [
        all(isinstance(row.get(c), (int, float)) or row.get(c) is None for row in rows)
        for c in columns
    ]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(columns), rule, *(line(r) for r in cells)])


# --- The document's table beside the model's --------------------------------------------


def doc_static_total_mb() -> int:
    """The document's ~205 MB, rebuilt from its own lines: 72 + 33 + 33 (grads) + 67."""
    return DOC_SHARED_MB + DOC_EXPERT_MB + DOC_EXPERT_MB + DOC_ADAMW_MB


def doc_unfrozen_by_its_own_sentence_mb() -> int:
    """205 + 72 (shared grads) + 144 (shared AdamW): what the document's sentence adds up to."""
    return DOC_BUDGET_MB + DOC_UNFROZEN_GRADS_MB + DOC_UNFROZEN_ADAMW_MB


def doc_vs_model_rows(config: ModelConfig) -> list[dict[str, Any]]:
    """The document's table, line by line, beside the same lines computed for `config`.

    Static memory only (batch 1 x 1: activations are treated in their own section).
    """
    counts = parameter_counts(config)
    budget = memory_budget(config, 1, 1, frozen=True)
    return [
        {
            "line": "shared (frozen)",
            "doc params": DOC_SHARED_PARAMS,
            "model params": counts.shared,
            "doc MB": float(DOC_SHARED_MB),
            "model MB": mb(budget.params_frozen),
        },
        {
            "line": "expert (trainable)",
            "doc params": DOC_EXPERT_PARAMS,
            "model params": counts.expert,
            "doc MB": float(DOC_EXPERT_MB),
            "model MB": mb(budget.params_trainable),
        },
        {
            "line": "expert gradients",
            "doc params": DOC_EXPERT_PARAMS,
            "model params": counts.expert,
            "doc MB": float(DOC_EXPERT_MB),
            "model MB": mb(budget.grads),
        },
        {
            "line": "AdamW states (2 per param)",
            "doc params": 2 * DOC_EXPERT_PARAMS,
            "model params": 2 * counts.expert,
            "doc MB": float(DOC_ADAMW_MB),
            "model MB": mb(budget.optimizer_state),
        },
        {
            "line": "total (static)",
            "doc params": None,
            "model params": counts.total,
            "doc MB": float(DOC_BUDGET_MB),
            "model MB": mb(budget.static),
        },
    ]


def layers_for_doc_shared(config: ModelConfig) -> float:
    """Attention layers a tied trunk would need to reach the document's 18M (not an integer)."""
    counts = parameter_counts(config)
    rest = DOC_SHARED_PARAMS - counts.token_embedding - counts.output_norm
    return rest / counts.attention_per_layer


def vocab_for_doc_shared(config: ModelConfig) -> float:
    """Vocabulary a tied trunk with this config's layers would need to reach 18M."""
    counts = parameter_counts(config)
    return (DOC_SHARED_PARAMS - counts.attention - counts.output_norm) / config.d_model


def trunk_for_doc_unfrozen() -> float:
    """Trunk parameters that 516 MB implies at 16 B per trained param, with an 8.4M expert."""
    return DOC_UNFROZEN_MB * MB / ADAMW_FP32_BYTES_PER_TRAINED_PARAM - DOC_EXPERT_PARAMS


def shared_count_readings(config: ModelConfig) -> list[dict[str, Any]]:
    """Every reading of the architecture we could think of that might give "18M shared".

    Each row says how far it lands from the document's figure. The last two rows
    solve for the layer count and the vocabulary that a tied 18M trunk would
    need, to show how far from the real configuration they are.
    """
    counts = parameter_counts(config)
    untied_head = config.vocab_size * config.d_model  # a separate (vocab, d_model) output matrix
    learned_positions = config.max_seq_len * config.d_model
    readings = [
        ("as built: LM head tied to the embedding", counts.shared),
        ("LM head untied (its own vocab x d_model matrix)", counts.shared + untied_head),
        (
            "untied head + learned positions",
            counts.shared + untied_head + learned_positions,
        ),
        ("shared trunk + one expert (the trainer model)", counts.total),
    ]
    rows = [
        {
            "reading": name,
            "params": params,
            "params - 18M": params - DOC_SHARED_PARAMS,
            "off by %": 100.0 * (params - DOC_SHARED_PARAMS) / DOC_SHARED_PARAMS,
        }
        for name, params in readings
    ]
    layers_needed = layers_for_doc_shared(config)
    vocab_needed = vocab_for_doc_shared(config)
    rows.append(
        {
            "reading": f"tied, with {layers_needed:.2f} layers instead of {config.n_layers}",
            "params": DOC_SHARED_PARAMS,
            "params - 18M": 0,
            "off by %": 0.0,
        }
    )
    rows.append(
        {
            "reading": f"tied, with a vocabulary of {vocab_needed:,.0f} instead of "
            f"{config.vocab_size:,}",
            "params": DOC_SHARED_PARAMS,
            "params - 18M": 0,
            "off by %": 0.0,
        }
    )
    return rows


def unfrozen_readings(config: ModelConfig) -> list[dict[str, Any]]:
    """Ways to reach the document's "516 MB without freezing", and the ratio each gives.

    The ratio column divides by the document's 205 MB, except for the model's
    own row, which divides by the model's own frozen static total.
    """
    counts = parameter_counts(config)
    frozen = memory_budget(config, 1, 1, frozen=True)
    unfrozen = memory_budget(config, 1, 1, frozen=False)
    per = ADAMW_FP32_BYTES_PER_TRAINED_PARAM
    untied = counts.shared + config.vocab_size * config.d_model
    doc_sentence = doc_unfrozen_by_its_own_sentence_mb()
    doc_counts = (DOC_SHARED_PARAMS + DOC_EXPERT_PARAMS) * per / MB
    doc_twice = doc_sentence + DOC_EXPERT_MB + DOC_ADAMW_MB
    untied_mb = (untied + counts.expert) * per / MB
    shared_needed = trunk_for_doc_unfrozen()
    rows = [
        ("document's own sentence: 205 + 72 grads + 144 AdamW", doc_sentence, DOC_BUDGET_MB),
        ("document's counts, 16 B per param: (18M + 8.4M) x 16 B", doc_counts, DOC_BUDGET_MB),
        ("sentence + the expert's grads and AdamW a second time", doc_twice, DOC_BUDGET_MB),
        ("untied LM head, everything trained: (21.0M + 8.4M) x 16 B", untied_mb, DOC_BUDGET_MB),
        (
            f"16 B per param would need a {shared_needed / 1e6:.2f}M-param trunk",
            float(DOC_UNFROZEN_MB),
            DOC_BUDGET_MB,
        ),
        ("this model as built, static bytes (exact)", mb(unfrozen.static), None),
    ]
    return [
        {
            "reading": name,
            "unfrozen MB": float(total),
            "ratio": float(total / (base if base is not None else mb(frozen.static))),
        }
        for name, total, base in rows
    ]


# --- Budget tables ---------------------------------------------------------------------


def budget_table(
    config: ModelConfig, batch_size: int, seq_len: int, optimizer: str = "adamw"
) -> list[dict[str, Any]]:
    """Frozen vs unfrozen, by category, in MB; plus static and full totals.

    The numbers are `memory_budget`'s, so the bar chart and this table agree by
    construction (a test checks it).
    """
    frozen = memory_budget(config, batch_size, seq_len, frozen=True, optimizer=optimizer)
    unfrozen = memory_budget(config, batch_size, seq_len, frozen=False, optimizer=optimizer)
    rows = [
        {
            "category": label,
            "frozen MB": mb(getattr(frozen, attr)),
            "unfrozen MB": mb(getattr(unfrozen, attr)),
        }
        for attr, label, _ in CATEGORIES
    ]
    rows.append(
        {
            "category": "static total",
            "frozen MB": mb(frozen.static),
            "unfrozen MB": mb(unfrozen.static),
        }
    )
    rows.append(
        {"category": "total", "frozen MB": mb(frozen.total), "unfrozen MB": mb(unfrozen.total)}
    )
    return rows


@dataclass(frozen=True)
class ShrinkOption:
    """One way to run the same optimizer step with less activation memory."""

    label: str
    batch_size: int  # micro-batch that is alive at once
    seq_len: int
    accumulation_steps: int = 1  # micro-batches whose gradients are summed before the step
    drop_loss_term: bool = False  # chunked loss: the (B, T, vocab) log-softmax never exists whole


def shrink_rows(
    config: ModelConfig, options: Sequence[ShrinkOption], frozen: bool = True
) -> list[dict[str, Any]]:
    """Analytic effect of each option on activations and on the full total, in MB.

    Gradient accumulation keeps the tokens per optimizer step and divides the
    activations by the number of micro-batches; static memory is unchanged.
    `drop_loss_term` removes the whole log-softmax term: what a chunked loss
    approaches as its chunks get small (each chunk's own slice still exists).
    """
    rows = []
    for option in options:
        budget = memory_budget(config, option.batch_size, option.seq_len, frozen=frozen)
        activations = budget.activations
        if option.drop_loss_term:
            activations -= budget.details["loss (log-softmax over vocab)"]
        rows.append(
            {
                "option": option.label,
                "tokens/step": option.batch_size * option.seq_len * option.accumulation_steps,
                "activations MB": mb(activations),
                "static MB": mb(budget.static),
                "total MB": mb(budget.static + activations),
            }
        )
    return rows


# --- One real training step -----------------------------------------------------------


def measure_step(
    config: ModelConfig,
    batch_size: int,
    seq_len: int,
    frozen: bool,
    seed: int = 0,
    attention_path: str = "fused",
    trunk_dropout: bool = False,
) -> MemoryBreakdown:
    """Build the trainer model, warm up with one step, then measure a second step.

    The warm-up matters: the first matmul allocates the BLAS workspace and the
    first AdamW step allocates exp_avg / exp_avg_sq, neither of which recurs.
    The attention path and trunk dropout are fixed as `memory_budget` is told
    (defaults: fused, off), so the two sides describe the same step.
    """
    from .trainer_model import seeded_trainer_model

    check_step_settings(frozen, attention_path, trunk_dropout)
    model = seeded_trainer_model(config, frozen, seed)
    configure_trunk(model, attention_path, trunk_dropout)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    ids = torch.randint(0, config.vocab_size, (batch_size, seq_len))
    targets = torch.randint(0, config.vocab_size, (batch_size, seq_len))
    measure_training_step(model, (ids, targets), optimizer)  # warm-up
    return measure_training_step(model, (ids, targets), optimizer)


def peak_method(device_type: str = "cpu") -> str:
    """How `measure_training_step` reads the peak on this device."""
    if device_type == "cuda":
        return "torch.cuda.max_memory_allocated"
    return "heap high-water mark: mallinfo2 after each aten op (TorchDispatchMode)"


_METHODS = {
    "params_frozen": "distinct tensor storages, summed",
    "params_trainable": "distinct tensor storages, summed",
    "grads": "distinct tensor storages, summed",
    "optimizer_state": "distinct tensor storages, summed",
    "activations": "saved_tensors_hooks: distinct saved storages",
}


def analytic_vs_measured_rows(
    analytic: MemoryBreakdown, measured: MemoryBreakdown, device_type: str = "cpu"
) -> list[dict[str, Any]]:
    """Bytes per category, analytic beside measured, with the difference and the method.

    The peak has no analytic counterpart (the formula gives what is saved, not
    when it is freed), so its analytic cell is empty and the measured value is
    rounded to whole MB: it moves by a few kB from run to run (heap bookkeeping).
    """
    rows = [
        {
            "category": label,
            "analytic bytes": getattr(analytic, attr),
            "measured bytes": getattr(measured, attr),
            "difference": getattr(measured, attr) - getattr(analytic, attr),
            "measured by": _METHODS[attr],
        }
        for attr, label, _ in CATEGORIES
    ]
    if measured.peak is not None:
        rows.append(
            {
                "category": "peak (MB, rounded)",
                "analytic bytes": None,
                "measured bytes": round(mb(measured.peak)),
                "difference": None,
                "measured by": peak_method(device_type),
            }
        )
    return rows


# --- Charts ----------------------------------------------------------------------------


def _stack_bar(ax: Axes, x: float, budget: MemoryBreakdown, width: float, label: bool) -> None:
    bottom = 0.0
    for attr, name, colour in CATEGORIES:
        height = mb(getattr(budget, attr))
        ax.bar(x, height, width, bottom=bottom, color=colour, label=name if label else None)
        bottom += height
    ax.annotate(
        f"{bottom:,.1f} MB",
        (x, bottom),
        xytext=(0, 3),
        textcoords="offset points",
        ha="center",
        va="bottom",
        fontsize=9,
    )


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
    """Activations against batch size (left) and against sequence length (right).

    Frozen and unfrozen on the same (fused) attention path, with each mode's
    static memory as a flat line: where a curve crosses its line, activations
    outweigh everything the document counts. A third curve is the trainer
    model's own default for an unfrozen trunk on CPU: trunk dropout on, which
    sends attention down the math path and keeps (B, heads, T, T) tensors, so
    that curve bends upwards in the right panel.
    """
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(11, 4.2))
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


# --- Making 205 MB real: peak of the plain and the lean step -----------------------------


@dataclass(frozen=True)
class PeakBar:
    """One training-step setting on the peak chart.

    `analytic` is `peak.peak_budget`'s prediction, `measured` what
    `peak.measure_peak` read off a real step (None where the step is too slow or
    too large to run in the chapter); `moment` names the instant of the step's
    timeline where the prediction peaks, which says what to shrink next.
    """

    label: str
    analytic: int  # bytes
    measured: int | None = None  # bytes
    moment: str = ""


def peak_bars(
    config: ModelConfig,
    measured_lean: Mapping[bool, int],
    batch_size: int = 16,
    seq_len: int = 512,
    lean: LeanOptions = LEAN_EXPERT,
) -> list[PeakBar]:
    """The section's four settings: plain and lean step, trunk frozen (one expert) and not.

    Plain steps use torch's default AdamW, lean steps the fused one
    (`lean.make_lean_optimizer`), as each is run in practice. `measured_lean`
    maps frozen (True/False) to the measured lean peak in bytes; the plain
    steps at a realistic batch are shown analytically only (gigabytes, and
    minutes to run on a CPU), which `peak_budget` predicts within
    `PEAK_TOLERANCE` where it has been measured (tests/test_peak.py).

    Full training here differs from the expert in freezing alone (fused
    attention, no trunk dropout on both sides). Two more plain bars add one
    effect each: the math attention path, then the trunk's dropout on top (the
    trainer model's default for an unfrozen trunk on CPU).
    """
    bars = []
    for name, options, optimizer in (("plain", PLAIN, "adamw"), ("lean", lean, "adamw-fused")):
        for frozen in (True, False):
            estimate = peak_budget(config, batch_size, seq_len, frozen, options, optimizer)
            bars.append(
                PeakBar(
                    label=f"{name}, {'one expert' if frozen else 'full training'}",
                    analytic=estimate.peak,
                    measured=measured_lean.get(frozen) if name == "lean" else None,
                    moment=estimate.moment,
                )
            )
    for label, dropout in (("math path", False), ("math path + trunk dropout", True)):
        estimate = peak_budget(config, batch_size, seq_len, False, PLAIN, "adamw", "math", dropout)
        bars.append(
            PeakBar(
                label=f"plain, full training, {label}",
                analytic=estimate.peak,
                moment=estimate.moment,
            )
        )
    return bars


def peak_rows(bars: Sequence[PeakBar]) -> list[dict[str, Any]]:
    """The bars as table rows, in MB; measured peaks rounded to whole MB.

    "vs 205 MB" divides the measured peak (the analytic one where nothing was
    measured) by the document's budget; print it with two decimals.

    The heap's high-water mark moves by a few kB from run to run, so the
    measured column is rounded to what is stable: a tenth of a MB can flip
    between two runs, a whole MB (hundreds of kB from a boundary) does not.
    """
    return [
        {
            "step": bar.label,
            "analytic MB": mb(bar.analytic),
            "measured MB": None if bar.measured is None else round(mb(bar.measured)),
            "vs 205 MB": mb(bar.measured or bar.analytic) / DOC_BUDGET_MB,
            "peak moment": bar.moment,
        }
        for bar in bars
    ]


def plot_peak_bars(
    bars: Sequence[PeakBar],
    ax: Axes | None = None,
    log_scale: bool = True,
    title: str = "Peak memory of one training step, seed preset, fp32",
) -> Axes:
    """Analytic and measured peaks side by side, against the document's 205 MB and 516 MB.

    Bars are drawn in order, each setting's analytic bar first, then its
    measured bar if it has one. The plain steps are gigabytes and the lean ones
    hundreds of MB, so the y axis is logarithmic by default: on a linear one
    the lean bars and both reference lines would sit in the bottom tenth.
    Every bar carries its value, since a log axis is hard to read off.
    """
    if not bars:
        raise ValueError("plot_peak_bars needs at least one PeakBar")
    if ax is None:
        _, ax = plt.subplots(figsize=(10, 4.8))
    width = 0.38
    labelled: set[str] = set()
    for i, bar in enumerate(bars):
        pairs = [("analytic (peak_budget)", bar.analytic, "#9ecae1")]
        if bar.measured is not None:
            pairs.append(("measured (measure_peak)", bar.measured, "#3182bd"))
        offsets = [0.0] if len(pairs) == 1 else [-width / 2, width / 2]
        for (kind, value, colour), dx in zip(pairs, offsets, strict=True):
            ax.bar(
                i + dx,
                mb(value),
                width,
                color=colour,
                label=None if kind in labelled else kind,
            )
            labelled.add(kind)
            ax.annotate(
                f"{mb(value):,.1f}",
                (i + dx, mb(value)),
                xytext=(0, 3),
                textcoords="offset points",
                ha="center",
                fontsize=8,
            )
    for value, label, style in REFERENCE_LINES:
        ax.axhline(value, color="black", linestyle=style, linewidth=1, label=label)
    ax.set_xticks(range(len(bars)), [textwrap.fill(bar.label, 16) for bar in bars], fontsize=8)
    ax.set_ylabel("peak memory (MB, 1 MB = 10^6 bytes)")
    if log_scale:
        ax.set_yscale("log")
        top = max(mb(max(b.analytic, b.measured or 0)) for b in bars)
        ax.set_ylim(100, top * 2)
    else:
        ax.set_ylim(0, ax.get_ylim()[1] * 1.1)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper right")
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


def bar_heights(ax: Axes) -> np.ndarray:
    """Heights of the bar patches on `ax`, in drawing order (for tests and checks)."""
    return np.array([patch.get_height() for patch in ax.patches])

"""One real training step against the analytic budget, and the peak of plain and lean steps.

`measure_step` / `analytic_vs_measured_rows` run one real step and compare it
with `memory.memory_budget`, category by category; `shrink_rows` lists ways to
run the same optimizer step with less activation memory; `peak_bars`,
`peak_rows` and `plot_peak_bars` put the peak of the plain and the lean step
(`modularforge.measure.peak`) against the document's 205 MB and 516 MB.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import matplotlib.pyplot as plt
import torch
from matplotlib.axes import Axes

from modularforge.lean.step import LEAN_EXPERT, LeanOptions
from modularforge.measure.memory import (
    DOC_BUDGET_MB,
    MemoryBreakdown,
    check_step_settings,
    measure_training_step,
    memory_budget,
)
from modularforge.measure.memory_format import CATEGORIES, REFERENCE_LINES, mb
from modularforge.measure.peak import PLAIN, configure_trunk, peak_budget
from modularforge.model.config import ModelConfig


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
    from modularforge.model.trainer_model import seeded_trainer_model

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
    return "storage high-water mark: tensor storages summed after each aten op (TorchDispatchMode)"


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
    `PEAK_TOLERANCE` where it has been measured (tests/measure/test_peak.py).

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

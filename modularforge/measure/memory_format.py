"""Shared pieces of the memory chapters' tables and charts: units, categories, reference lines.

`memory_tables`, `peak_plots` and `memory_plots` all draw on these, so they live
in a module that imports none of them (no import cycles). All sizes are decimal
megabytes (1 MB = 10**6 bytes), the design document's unit.
"""

from __future__ import annotations

import numpy as np
from matplotlib.axes import Axes

from modularforge.measure.memory import (
    DOC_BUDGET_MB,
    DOC_UNFROZEN_MB,
    MB,
    MemoryBreakdown,
)
from modularforge.measure.text_table import format_table  # noqa: F401  (re-exported: chapters import it here)

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


# --- Chart helpers ---


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


def bar_heights(ax: Axes) -> np.ndarray:
    """Heights of the bar patches on `ax`, in drawing order (for tests and checks)."""
    return np.array([patch.get_height() for patch in ax.patches])

"""The architecture chapter's helpers: read the model's parts off a live module, draw, count.

Why read a live model instead of the config: the diagram and the table are the
book's first claim about what is frozen and what learns. Drawing them from
`requires_grad` and `numel()` of the real parameters means the picture cannot
disagree with the code; if someone forgets `shared.freeze()`, the diagram shows
an orange trunk. The forward order is traced with forward hooks during one tiny
forward pass, so it is the order the model actually runs, not a list typed here.

matplotlib is imported inside the drawing functions only: the package itself
does not depend on it (Colab and the book's environment have it).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from modularforge.model.trainer_model import ModuleTrainerModel

if TYPE_CHECKING:  # pragma: no cover - typing only
    from matplotlib.axes import Axes

__all__ = [
    "FROZEN_COLOR",
    "TRAINABLE_COLOR",
    "ComponentRow",
    "component_rows",
    "draw_architecture",
    "format_comparison",
    "format_table",
    "grouped_rows",
    "plot_parameter_bars",
    "totals",
    "traced_forward_order",
]

#: Fill colour of a box whose parameters do not require gradients.
FROZEN_COLOR = "#9db4cc"
#: Fill colour of a box whose parameters require gradients.
TRAINABLE_COLOR = "#f28e2b"
#: Name of the tied LM head row: it owns no parameter, it reuses the embedding's.
LM_HEAD_NAME = "LM head (tied)"


@dataclass(frozen=True)
class ComponentRow:
    """One box of the diagram and one line of the table.

    `params` counts the parameters this component owns, read from the live
    module (`sum(p.numel())`). The LM head owns none: it multiplies by the token
    embedding matrix, so it has `params == 0` and `tied_to` names the embedding.
    `trainable` is True when any of the component's parameters requires a
    gradient (for the LM head: when the embedding weight it reuses does).
    """

    name: str  # label in the diagram, e.g. "attention 0"
    kind: str  # "embedding", "attention", "expert_ffn", "output_norm" or "lm_head"
    role: str  # "shared" (trunk, trained in phase 1) or "expert" (trained in phase 2)
    params: int  # parameters owned by this component (0 for the tied LM head)
    trainable: bool  # from requires_grad of the live parameters
    detail: str  # what is inside, e.g. "LN + QKV + out proj"
    layer: int | None = None  # layer index for attention and expert rows
    tied_to: str | None = None  # the row whose weights this one reuses


def _own_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _any_trainable(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


def _hooked_modules(model: ModuleTrainerModel) -> dict[str, nn.Module]:
    """The top-level component modules, keyed by their name in `model.named_modules()`."""
    modules = {"shared.token_embedding": model.shared.token_embedding}
    for i in range(model.config.n_layers):
        modules[f"shared.attention.{i}"] = model.shared.attention[i]
        modules[f"experts.{i}"] = model.experts[i]
    modules["shared.output_norm"] = model.shared.output_norm
    return modules


def traced_forward_order(model: ModuleTrainerModel, seq_len: int = 4) -> list[str]:
    """Module names in the order the forward pass calls them (one 1 x `seq_len` forward).

    Forward hooks on the embedding, every attention block, every expert layer and
    the output norm record each call. The model's train/eval mode and gradients
    are left as they were.
    """
    order: list[str] = []
    handles = [
        module.register_forward_hook(lambda *_args, _name=name: order.append(_name))
        for name, module in _hooked_modules(model).items()
    ]
    try:
        with torch.no_grad():
            device = model.shared.token_embedding.weight.device
            model(torch.zeros(1, seq_len, dtype=torch.long, device=device))
    finally:
        for handle in handles:
            handle.remove()
    return order


def component_rows(model: ModuleTrainerModel) -> list[ComponentRow]:
    """The model's components in forward order, each with its live parameter count.

    Embedding + positions, then per layer the shared attention block and the
    expert FFN, then the output norm and the tied LM head. The order comes from
    `traced_forward_order`; the LM head (an `F.linear` with the embedding matrix,
    not a module) is added last, with 0 parameters of its own.
    """
    modules = _hooked_modules(model)
    d, f, vocab = model.config.d_model, model.config.d_ff, model.config.vocab_size
    rows = []
    for name in traced_forward_order(model):
        module = modules[name]
        if name == "shared.token_embedding":
            row = ComponentRow(
                "token embedding + positions",
                "embedding",
                "shared",
                _own_params(module),
                _any_trainable(module),
                f"{vocab} x {d} table; sinusoidal positions have no params",
            )
        elif name.startswith("shared.attention."):
            layer = int(name.rsplit(".", 1)[1])
            row = ComponentRow(
                f"attention {layer}",
                "attention",
                "shared",
                _own_params(module),
                _any_trainable(module),
                "LN + QKV + out proj",
                layer=layer,
            )
        elif name.startswith("experts."):
            layer = int(name.rsplit(".", 1)[1])
            row = ComponentRow(
                f"expert FFN {layer}",
                "expert_ffn",
                "expert",
                _own_params(module),
                _any_trainable(module),
                f"LN + {d}->{f} + GELU + {f}->{d}",
                layer=layer,
            )
        else:
            row = ComponentRow(
                "output norm",
                "output_norm",
                "shared",
                _own_params(module),
                _any_trainable(module),
                "final LayerNorm",
            )
        rows.append(row)
    rows.append(
        ComponentRow(
            LM_HEAD_NAME,
            "lm_head",
            "shared",
            0,
            bool(model.shared.lm_head_weight.requires_grad),
            "reuses the embedding matrix",
            tied_to="token embedding + positions",
        )
    )
    return rows


def totals(rows: Iterable[ComponentRow]) -> dict[str, int]:
    """Parameters of the shared trunk, of the expert, and of both (the tied head adds 0)."""
    rows = list(rows)
    shared = sum(r.params for r in rows if r.role == "shared")
    expert = sum(r.params for r in rows if r.role == "expert")
    return {"shared": shared, "expert": expert, "all": shared + expert}


#: Table and bar labels of each kind, in forward order.
_KIND_LABELS = {
    "embedding": "token embedding (= LM head, tied)",
    "attention": "attention block",
    "output_norm": "output norm",
    "lm_head": "LM head (tied, reuses embedding)",
    "expert_ffn": "expert FFN",
}


@dataclass(frozen=True)
class GroupedRow:
    """All rows of one kind: per-copy count, number of copies and their sum."""

    label: str
    role: str
    per_copy: int
    copies: int
    total: int
    trainable: bool


def grouped_rows(rows: Iterable[ComponentRow]) -> list[GroupedRow]:
    """One row per kind (the 4 attention blocks become one row "x 4"): shared, then expert.

    Raises ValueError if the copies of one kind differ in size, since "per layer"
    would then be meaningless.
    """
    by_kind: dict[str, list[ComponentRow]] = {}
    for row in rows:
        by_kind.setdefault(row.kind, []).append(row)
    grouped = []
    for kind, members in by_kind.items():
        sizes = {m.params for m in members}
        if len(sizes) != 1:
            raise ValueError(f"the {kind} components differ in size: {sorted(sizes)}")
        grouped.append(
            GroupedRow(
                _KIND_LABELS[kind],
                members[0].role,
                members[0].params,
                len(members),
                sum(m.params for m in members),
                any(m.trainable for m in members),
            )
        )
    # Shared kinds first, then the expert (stable: forward order within each role).
    return sorted(grouped, key=lambda g: g.role != "shared")


def format_table(rows: Iterable[ComponentRow]) -> str:
    """A fixed-width table: per kind, params per copy, copies, total, role, state; then totals.

    The component column is as wide as its longest label, so the table fits the
    book's column (`text_table.TABLE_WIDTH`).
    """
    rows = list(rows)
    groups = grouped_rows(rows)
    w = max(len("expert total"), *(len(g.label) for g in groups))
    header = f"{'component':<{w}} {'per copy':>10} {'x':>2} {'params':>11}  {'role':<6} state"
    lines = [header, "-" * len(header)]
    for g in groups:
        state = "trainable" if g.trainable else "frozen"
        lines.append(
            f"{g.label:<{w}} {g.per_copy:>10,} {g.copies:>2} {g.total:>11,}  {g.role:<6} {state}"
        )
    lines.append("-" * len(header))
    counts = totals(rows)
    for key, label in (("shared", "shared total"), ("expert", "expert total"), ("all", "all")):
        lines.append(f"{label:<{w}} {'':>10} {'':>2} {counts[key]:>11,}")
    return "\n".join(lines)


def format_comparison(rows: Iterable[ComponentRow], analytic: dict[str, int]) -> str:
    """Live counts next to analytic ones (`parameter_counts(config)`), with a match column.

    `analytic` maps "shared", "expert" and "all" to the counts worked out from the
    config; the live side is `totals(rows)`.
    """
    live = totals(rows)
    lines = [f"{'':<8} {'analytic':>12} {'live model':>12}  equal"]
    for key in ("shared", "expert", "all"):
        lines.append(
            f"{key:<8} {analytic[key]:>12,} {live[key]:>12,}  {analytic[key] == live[key]}"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- figures


def _box_color(trainable: bool) -> str:
    return TRAINABLE_COLOR if trainable else FROZEN_COLOR


def draw_architecture(
    model: ModuleTrainerModel, ax: Axes | None = None, *, legend: bool = True
) -> Axes:
    """Draw the model top to bottom, one box per component, coloured by `requires_grad`.

    Each box is labelled with the component's name, its role and its live
    parameter count. Arrows down the middle are the residual stream; the bypass
    on the right of each attention and expert box is the residual connection
    (x + f(x)); a dashed line ties the LM head to the embedding it reuses. Each
    box patch has gid `box:<name>` and its label gid `label:<name>`, for tests.
    `legend=False` leaves the legend out (for side-by-side panels).
    """
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import FancyBboxPatch, Patch

    rows = component_rows(model)
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 0.9 * len(rows) + 1.5))
    width, height, step = 5.0, 0.62, 1.0
    left = -width / 2
    y_of = {row.name: -i * step for i, row in enumerate(rows)}
    d_model = model.config.d_model

    ax.annotate(
        "token ids (B, T)",
        xy=(0, height / 2 + 0.05),
        xytext=(0, 0.95),
        ha="center",
        va="bottom",
        arrowprops={"arrowstyle": "-|>", "color": "black"},
    )
    for i, row in enumerate(rows):
        y = y_of[row.name]
        box = FancyBboxPatch(
            (left, y - height / 2),
            width,
            height,
            boxstyle="round,pad=0.02,rounding_size=0.08",
            facecolor=_box_color(row.trainable),
            edgecolor="black",
            linestyle="--" if row.tied_to else "-",
            linewidth=1.2,
        )
        box.set_gid(f"box:{row.name}")
        ax.add_patch(box)
        count = f"{row.params:,} params" + (" (tied: shares the embedding)" if row.tied_to else "")
        label = ax.text(
            0,
            y,
            f"{row.name}  [{row.role}]\n{count}",
            ha="center",
            va="center",
            fontsize=9.5,
        )
        label.set_gid(f"label:{row.name}")
        ax.text(
            width / 2 + 0.4,
            y + 0.18,
            row.detail,
            ha="left",
            va="center",
            fontsize=8,
            color="0.35",
        )
        if i + 1 < len(rows):  # residual stream to the next component
            ax.annotate(
                "",
                xy=(0, y - step + height / 2),
                xytext=(0, y - height / 2),
                arrowprops={"arrowstyle": "-|>", "color": "black"},
            )
        if row.kind in ("attention", "expert_ffn"):  # residual bypass: x + f(x)
            x_skip = width / 2 + 0.25
            y_in, y_out = y + step / 2 - 0.04, y - step / 2 + 0.08
            ax.plot([0, x_skip, x_skip], [y_in, y_in, y_out], color="0.4", linewidth=0.9)
            ax.annotate(
                "",
                xy=(0.09, y_out),
                xytext=(x_skip, y_out),
                arrowprops={"arrowstyle": "-|>", "color": "0.4", "linewidth": 0.9},
            )
            ax.text(0.16, y_out - 0.02, "+", ha="left", va="top", fontsize=9, color="0.3")
    last = rows[-1]
    ax.annotate(
        f"next-token logits (B, T, {model.config.vocab_size})",
        xy=(0, y_of[last.name] - height / 2 - 0.05),
        xytext=(0, y_of[last.name] - 0.95),
        ha="center",
        va="top",
        arrowprops={"arrowstyle": "<|-", "color": "black"},
    )
    for row in rows:  # the weight tie: LM head -> embedding
        if row.tied_to:
            x_tie = left - 0.35
            y_from, y_to = y_of[row.name], y_of[row.tied_to]
            ax.plot([left, x_tie, x_tie], [y_from, y_from, y_to], "k--", linewidth=0.9)
            ax.annotate(
                "",
                xy=(left, y_to),
                xytext=(x_tie, y_to),
                arrowprops={"arrowstyle": "-|>", "linestyle": "--", "color": "black"},
            )
            ax.text(
                x_tie - 0.12,
                (y_from + y_to) / 2,
                "same weight matrix (tied)",
                rotation=90,
                ha="right",
                va="center",
                fontsize=8,
            )
    ax.text(
        -0.12,
        -0.5 * step,
        f"residual stream (B, T, {d_model})",
        ha="right",
        va="center",
        fontsize=8,
        color="0.35",
        style="italic",
    )
    handles = [
        Patch(facecolor=FROZEN_COLOR, edgecolor="black", label="frozen (requires_grad=False)"),
        Patch(facecolor=TRAINABLE_COLOR, edgecolor="black", label="trainable (requires_grad=True)"),
        Line2D([], [], color="0.4", linewidth=0.9, label="residual connection: x + f(x)"),
        Line2D([], [], color="black", linestyle="--", label="tied weights (0 new params)"),
    ]
    if legend:
        ax.legend(
            handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False
        )
    ax.set_xlim(left - 1.0, width / 2 + 2.6)
    ax.set_ylim(y_of[last.name] - 1.5, 1.5)
    ax.set_axis_off()
    total = totals(rows)
    n_trainable = sum(r.params for r in rows if r.trainable)
    ax.set_title(
        f"ModuleTrainerModel, drawn from the live module: {total['all']:,} params, "
        f"{n_trainable:,} trainable",
        fontsize=10,
    )
    return ax


def plot_parameter_bars(rows: Iterable[ComponentRow], ax: Axes | None = None) -> Axes:
    """Horizontal bars of parameters per kind (all copies summed), coloured by requires_grad.

    Bars are in forward order, top to bottom, and each carries its count; the
    tied LM head gets a zero-length bar and the note "0 (tied)". The legend sits
    outside the axes, on the right, where it covers no bar and no count.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    grouped = grouped_rows(rows)
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 3.2), layout="constrained")
    labels = [g.label + (f" x {g.copies}" if g.copies > 1 else "") for g in grouped]
    values = [g.total / 1e6 for g in grouped]
    positions = list(range(len(grouped)))[::-1]
    ax.barh(positions, values, color=[_box_color(g.trainable) for g in grouped], edgecolor="black")
    ax.set_yticks(positions, labels)
    for pos, g in zip(positions, grouped, strict=True):
        text = f"{g.total:,}" if g.total else "0 (tied)"
        ax.text(g.total / 1e6 + max(values) * 0.01, pos, text, va="center", fontsize=8.5)
    ax.set_xlim(0, max(values) * 1.25)
    ax.set_xlabel("parameters (millions)")
    ax.set_title("Parameters by component")
    ax.legend(
        handles=[
            Patch(facecolor=FROZEN_COLOR, edgecolor="black", label="frozen"),
            Patch(facecolor=TRAINABLE_COLOR, edgecolor="black", label="trainable"),
        ],
        # Outside the axes, right of the plot area: inside, the longest bars and
        # their counts run to the right edge, so any corner would cover one of them.
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        borderaxespad=0.0,
        fontsize=8,
    )
    return ax

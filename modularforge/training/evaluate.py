"""Scoring models on each domain: perplexities, the expert-by-domain matrix, routing plots.

The question the mixture has to answer is whether training experts one domain at a
time made them *different*: an expert trained on Python should predict Python better
than English, and better than the other experts do. A perplexity matrix (one row per
model, one column per domain's validation split) answers it at a glance, and the
same numbers give the comparison against a dense model trained on as many tokens.

All scores use fixed, non-overlapping validation windows, so every model is scored
on exactly the same tokens. A domain's column uses that domain's validation split; the
"mixed" column takes the same number of windows from every domain
(`modularforge.training.data.balanced_domain_batches`), so each domain weighs the same, and
`routed_loss` can score each domain's windows with a different model: that is how
the oracle row (each token sent to its own domain's expert) is computed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from modularforge.training.data import DomainData, balanced_domain_batches
from modularforge.training.train import evaluate, evaluate_batches

#: What a column of the matrix is scored on: one token stream, or a (mixed) split.
Validation = torch.Tensor | DomainData

__all__ = [
    "ComparisonRow",
    "ComparisonTable",
    "PerplexityMatrix",
    "comparison_from_matrix",
    "comparison_table",
    "perplexity",
    "perplexity_matrix",
    "plot_perplexity_heatmap",
    "routed_loss",
    "plot_routing",
    "plot_routing_by_layer",
    "specialization",
]


def routed_loss(
    models_by_domain: Mapping[str, nn.Module],
    data: DomainData,
    batch_size: int,
    seq_len: int,
    max_batches: int | None = None,
) -> float:
    """Mean loss on a mixture's balanced windows, each domain scored by its own model.

    Every domain contributes the same number of windows, so the mean of the domains'
    losses is also the mean over all windows. With one model for every domain this is
    that model's mixed validation loss; with each domain's expert it is routing by the
    domain label (an oracle router that knows where every token came from).
    """
    groups = balanced_domain_batches(data, batch_size, seq_len, max_batches)
    missing = sorted(set(groups) - set(models_by_domain))
    if missing:
        raise ValueError(f"no model for domain(s) {missing}; got {sorted(models_by_domain)}")
    losses = [evaluate_batches(models_by_domain[d], batches) for d, batches in groups.items()]
    return sum(losses) / len(losses)


def perplexity(
    model: nn.Module,
    tokens: Validation,
    batch_size: int,
    seq_len: int,
    max_batches: int | None = None,
) -> float:
    """exp(mean next-token loss) on fixed validation windows of `tokens`.

    `tokens` is one token stream, or a `DomainData` (a mixture is scored on equal
    windows from every domain). Perplexity rather than loss because it reads as "the
    model hesitates between this many equally likely next tokens", which makes gaps
    between models concrete.
    """
    if isinstance(tokens, DomainData):
        if tokens.val_parts:
            domains = dict.fromkeys(tokens.val_parts, model)
            return math.exp(routed_loss(domains, tokens, batch_size, seq_len, max_batches))
        tokens = tokens.val
    return math.exp(evaluate(model, tokens, batch_size, seq_len, max_batches))


@dataclass(frozen=True)
class PerplexityMatrix:
    """Perplexity of each model (rows) on each domain's validation text (columns)."""

    rows: list[str]
    cols: list[str]
    values: list[list[float]]  # values[r][c]

    def __post_init__(self) -> None:
        if len(self.values) != len(self.rows) or any(
            len(row) != len(self.cols) for row in self.values
        ):
            raise ValueError(
                f"values must be {len(self.rows)} x {len(self.cols)}, "
                f"got {[len(row) for row in self.values]}"
            )

    def __getitem__(self, key: tuple[str, str]) -> float:
        row, col = key
        return self.values[self.rows.index(row)][self.cols.index(col)]

    def as_tensor(self) -> torch.Tensor:
        """(rows, cols) float64 tensor."""
        return torch.tensor(self.values, dtype=torch.float64)

    def best_row(self, col: str) -> str:
        """The model with the lowest perplexity on domain `col`."""
        column = [row[self.cols.index(col)] for row in self.values]
        return self.rows[min(range(len(column)), key=column.__getitem__)]

    def best_col(self, row: str) -> str:
        """The domain on which model `row` has its lowest perplexity."""
        values = self.values[self.rows.index(row)]
        return self.cols[min(range(len(values)), key=values.__getitem__)]

    def subset(self, rows: Sequence[str] | None = None, cols: Sequence[str] | None = None):
        """A smaller matrix with only the named rows and columns (in the order given)."""
        rows = list(rows) if rows is not None else list(self.rows)
        cols = list(cols) if cols is not None else list(self.cols)
        return PerplexityMatrix(rows, cols, [[self[r, c] for c in cols] for r in rows])

    def to_dict(self) -> dict[str, object]:
        return {"rows": list(self.rows), "cols": list(self.cols), "values": self.values}

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> PerplexityMatrix:
        return cls(list(data["rows"]), list(data["cols"]), [list(r) for r in data["values"]])

    def to_text(self, digits: int = 1) -> str:
        """A plain aligned table (for the command line and `print`)."""
        width = max(len(name) for name in self.rows) + 2
        col_width = max(10, *(len(c) + 2 for c in self.cols))
        lines = [" " * width + "".join(f"{c:>{col_width}}" for c in self.cols)]
        for name, values in zip(self.rows, self.values, strict=True):
            cells = "".join(f"{v:>{col_width}.{digits}f}" for v in values)
            lines.append(f"{name:<{width}}{cells}")
        return "\n".join(lines)


def perplexity_matrix(
    models: Mapping[str, nn.Module],
    domains: Mapping[str, Validation],
    batch_size: int = 16,
    seq_len: int = 64,
    max_batches: int | None = None,
) -> PerplexityMatrix:
    """Score every model on every domain's tokens: rows = models, cols = domains."""
    if not models or not domains:
        raise ValueError("perplexity_matrix needs at least one model and one domain")
    values = [
        [perplexity(model, tokens, batch_size, seq_len, max_batches) for tokens in domains.values()]
        for model in models.values()
    ]
    return PerplexityMatrix(list(models), list(domains), values)


@dataclass(frozen=True)
class Specialization:
    """Does each expert do best on its own domain? Computed from a perplexity matrix."""

    own_is_best_domain: dict[str, bool]  # expert row -> its lowest column is its own domain
    best_expert_is_own: dict[str, bool]  # domain -> the lowest row is that domain's expert
    margin: dict[str, float]  # domain -> best other expert's perplexity / own expert's (>1 good)

    @property
    def holds(self) -> bool:
        """Every domain is predicted best by its own expert."""
        return all(self.best_expert_is_own.values())

    @property
    def n_domains_won(self) -> int:
        return sum(self.best_expert_is_own.values())


def specialization(
    matrix: PerplexityMatrix, expert_for_domain: Mapping[str, str]
) -> Specialization:
    """Compare each domain's own expert with the other experts, column by column.

    Two different questions, both answered: is an expert's *lowest* perplexity on its
    own domain (domains differ in difficulty, so this can fail even for a specialist),
    and is a domain's *best* expert the one trained on it (the fair test: same column,
    same tokens).
    """
    experts = list(expert_for_domain.values())
    own_is_best_domain = {}
    best_expert_is_own = {}
    margin = {}
    for domain, expert in expert_for_domain.items():
        sub = matrix.subset(rows=experts)
        own_is_best_domain[expert] = sub.best_col(expert) == domain if domain in sub.cols else False
        best_expert_is_own[domain] = sub.best_row(domain) == expert
        others = [sub[e, domain] for e in experts if e != expert]
        margin[domain] = (min(others) / sub[expert, domain]) if others else math.nan
    return Specialization(own_is_best_domain, best_expert_is_own, margin)


def plot_perplexity_heatmap(matrix: PerplexityMatrix, ax=None, title: str | None = None):
    """Annotated heatmap: each cell is a model's perplexity on a domain; lower is better.

    The colour scale is logarithmic because perplexities of a weak and a strong model
    differ by factors, not by offsets. The best model per column is framed.
    """
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm
    from matplotlib.patches import Rectangle

    if ax is None:
        _, ax = plt.subplots(figsize=(1.6 * len(matrix.cols) + 2.5, 0.6 * len(matrix.rows) + 1.8))
    data = matrix.as_tensor().numpy()
    image = ax.imshow(
        data, cmap="viridis_r", norm=LogNorm(vmin=data.min(), vmax=data.max()), aspect="auto"
    )  # "auto": cells as wide as the figure allows, so column labels never collide
    ax.set_xticks(range(len(matrix.cols)), labels=matrix.cols)
    ax.set_yticks(range(len(matrix.rows)), labels=matrix.rows)
    ax.set_xlabel("validation text (domain)")
    ax.set_ylabel("model")
    ax.set_title(title or "Perplexity of each model on each domain (lower is better)")
    middle = math.sqrt(data.min() * data.max())
    for r in range(len(matrix.rows)):
        for c in range(len(matrix.cols)):
            value = data[r, c]
            ax.text(
                c, r, f"{value:.1f}", ha="center", va="center",
                color="white" if value > middle else "black", fontsize=9,
            )  # fmt: skip
    for c, col in enumerate(matrix.cols):
        r = matrix.rows.index(matrix.best_row(col))
        ax.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, edgecolor="red", lw=2))
    colorbar = ax.figure.colorbar(image, ax=ax)
    colorbar.set_label("perplexity")
    return ax


@dataclass(frozen=True)
class ComparisonRow:
    """One model of the comparison: its training tokens and perplexities."""

    name: str
    training_tokens: int  # tokens this model's own weights saw (trunk + its FFNs + router)
    mixed: float  # perplexity on the mixed validation text (equal windows per domain)
    domains: dict[str, float]  # perplexity on each domain's validation text
    parameters: int = 0  # parameters the system holds (tied embedding counted once)


@dataclass
class ComparisonTable:
    """Dense vs single experts vs mixtures, scored on the same validation tokens."""

    rows: list[ComparisonRow] = field(default_factory=list)
    system_tokens: int = 0  # tokens the whole modular system was trained on (phase 1+2+3)

    @property
    def domains(self) -> list[str]:
        return list(self.rows[0].domains) if self.rows else []

    def row(self, name: str) -> ComparisonRow:
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(f"no row {name!r}; rows are {[r.name for r in self.rows]}")

    def best(self, column: str = "mixed") -> str:
        """Name of the model with the lowest perplexity on `column` ("mixed" or a domain)."""

        def score(row: ComparisonRow) -> float:
            return row.mixed if column == "mixed" else row.domains[column]

        return min(self.rows, key=score).name

    def to_markdown(self, digits: int = 1) -> str:
        header = ["model", "training tokens", "parameters", "mixed", *self.domains]
        lines = [
            "| " + " | ".join(header) + " |",
            "|" + "|".join([":---", *["---:"] * (len(header) - 1)]) + "|",
        ]
        for row in self.rows:
            best = {c: self.best(c) == row.name for c in ["mixed", *self.domains]}
            cells = [
                f"{row.mixed:.{digits}f}",
                *(f"{row.domains[d]:.{digits}f}" for d in self.domains),
            ]
            cells = [
                f"**{cell}**" if best[c] else cell
                for cell, c in zip(cells, ["mixed", *self.domains], strict=True)
            ]
            lines.append(
                f"| {row.name} | {row.training_tokens:,} | {row.parameters:,} | "
                + " | ".join(cells)
                + " |"
            )
        return "\n".join(lines)

    def to_text(self, digits: int = 1) -> str:
        width = max(len(r.name) for r in self.rows) + 2
        cols = ["tokens", "params", "mixed", *self.domains]
        lines = [" " * width + "".join(f"{c:>11}" for c in cols)]
        for row in self.rows:
            values = [row.mixed, *(row.domains[d] for d in self.domains)]
            lines.append(
                f"{row.name:<{width}}{row.training_tokens:>11,}{row.parameters:>11,}"
                + "".join(f"{v:>11.{digits}f}" for v in values)
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, object]:
        return {
            "system_tokens": self.system_tokens,
            "rows": [
                {"name": r.name, "training_tokens": r.training_tokens, "mixed": r.mixed,
                 "domains": dict(r.domains), "parameters": r.parameters}
                for r in self.rows
            ],
        }  # fmt: skip


def comparison_table(
    models: Mapping[str, nn.Module],
    training_tokens: Mapping[str, int],
    mixed_val: Validation,
    domain_vals: Mapping[str, torch.Tensor],
    batch_size: int = 16,
    seq_len: int = 64,
    max_batches: int | None = None,
    system_tokens: int = 0,
) -> ComparisonTable:
    """Score each model on the mixed validation text and on each domain.

    The fair comparison is at equal *total* training tokens: the dense baseline is
    trained for as many tokens as phase 1 + every expert + the router together
    (`system_tokens`), so any gap is due to the architecture, not to more data.
    """
    missing = sorted(set(models) - set(training_tokens))
    if missing:
        raise ValueError(f"training_tokens has no entry for {missing}")
    columns = {**domain_vals, "mixed": mixed_val}
    matrix = perplexity_matrix(models, columns, batch_size, seq_len, max_batches)
    parameters = {name: count_parameters(model) for name, model in models.items()}
    return comparison_from_matrix(matrix, training_tokens, system_tokens, parameters)


def count_parameters(model: nn.Module) -> int:
    """Parameters a model holds; a tied or shared tensor is counted once."""
    return sum(p.numel() for p in model.parameters())


def comparison_from_matrix(
    matrix: PerplexityMatrix,
    training_tokens: Mapping[str, int],
    system_tokens: int = 0,
    parameters: Mapping[str, int] | None = None,
) -> ComparisonTable:
    """The comparison table from a matrix whose columns are the domains plus "mixed"."""
    if "mixed" not in matrix.cols:
        raise ValueError(f"the matrix needs a 'mixed' column, has {matrix.cols}")
    domains = [c for c in matrix.cols if c != "mixed"]
    table = ComparisonTable(system_tokens=system_tokens)
    for name in matrix.rows:
        table.rows.append(
            ComparisonRow(
                name=name,
                training_tokens=int(training_tokens[name]),
                mixed=matrix[name, "mixed"],
                domains={d: matrix[name, d] for d in domains},
                parameters=int((parameters or {}).get(name, 0)),
            )
        )
    return table


def plot_routing(
    fractions_by_domain: Mapping[str, torch.Tensor],
    expert_names: Sequence[str] | None = None,
    ax=None,
    layer: int | None = None,
    title: str | None = None,
):
    """Stacked bars: for each domain, the share of its tokens routed to each expert.

    `fractions_by_domain[d]` is `(n_layers, n_experts)` as `routing_fractions` returns
    it (or `(n_experts,)`). `layer=None` averages over layers; an int picks one layer.
    A router that learned the domains puts each domain's bar mostly in one colour.
    """
    import matplotlib.pyplot as plt

    domains = list(fractions_by_domain)
    shares = []
    for d in domains:
        f = torch.as_tensor(fractions_by_domain[d], dtype=torch.float64)
        if f.dim() == 2:
            f = f.mean(0) if layer is None else f[layer]
        shares.append(f)
    shares_t = torch.stack(shares)  # (domains, experts)
    n_experts = shares_t.shape[1]
    names = (
        list(expert_names)
        if expert_names is not None
        else [f"expert {i}" for i in range(n_experts)]
    )
    if len(names) != n_experts:
        raise ValueError(f"{len(names)} expert names for {n_experts} experts")
    if ax is None:
        _, ax = plt.subplots(figsize=(1.4 * len(domains) + 3, 3.6))
    bottom = torch.zeros(len(domains), dtype=torch.float64)
    colors = plt.get_cmap("tab10")
    for e in range(n_experts):
        values = shares_t[:, e]
        bars = ax.bar(
            domains, values.numpy(), bottom=bottom.numpy(), color=colors(e), label=names[e]
        )
        for bar, value, base in zip(bars, values.tolist(), bottom.tolist(), strict=True):
            if value >= 0.08:
                ax.text(bar.get_x() + bar.get_width() / 2, base + value / 2, f"{value:.0%}",
                        ha="center", va="center", fontsize=9, color="white")  # fmt: skip
        bottom += values
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of the domain's tokens (top-1 choice)")
    ax.set_xlabel("validation text (domain)")
    where = "averaged over layers" if layer is None else f"layer {layer}"
    ax.set_title(title or f"Where the router sends each domain's tokens ({where})")
    ax.legend(title="routed to", bbox_to_anchor=(1.02, 1), loc="upper left")
    return ax


def plot_routing_by_layer(
    fractions_by_domain: Mapping[str, torch.Tensor],
    expert_names: Sequence[str] | None = None,
    title: str | None = None,
):
    """One stacked-bar panel per layer: where each domain's tokens go, layer by layer.

    An average over layers can hide a router that sends everything to one expert in
    one layer and to another expert in the next; the per-layer panels show it.
    Returns the figure.
    """
    import matplotlib.pyplot as plt

    first = torch.as_tensor(next(iter(fractions_by_domain.values())))
    n_layers = first.shape[0] if first.dim() == 2 else 1
    fig, axes = plt.subplots(
        1, n_layers, figsize=(3.4 * n_layers + 2.6, 3.6), sharey=True, squeeze=False
    )
    for layer, ax in enumerate(axes[0]):
        plot_routing(fractions_by_domain, expert_names, ax=ax, layer=layer, title=f"layer {layer}")
        if layer:
            ax.set_ylabel("")
        if layer < n_layers - 1:
            ax.get_legend().remove()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig

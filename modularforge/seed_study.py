"""The same pipeline run with several seeds: mean, spread, and verdicts that respect them.

One run of the tiny pipeline decides nothing about small gaps: a different seed
changes the initialisation, the dropout masks and the batch order, and with them
every perplexity. This module reads finished pipeline directories that differ
only in their seed, and summarises each comparison row over the seeds.

Verdicts compare two rows **paired by seed** (the same seed trains the same trunk
for both, so its noise cancels in the difference). A row is called better or worse
than another only if every seed agrees on the direction *and* the mean gap is
larger than the standard deviation of the per-seed gaps; otherwise the verdict is
"inconclusive".

    python -m modularforge pipeline-seeds RUN_DIR [RUN_DIR ...] --json OUT.json
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .atomic import atomic_write_bytes

__all__ = [
    "PairedVerdict",
    "Spread",
    "paired_verdict",
    "plot_seed_study",
    "spread",
    "summarize_runs",
    "summary_table",
    "verdicts_against",
    "write_summary",
]

#: Settings that may differ between the runs of one study (and the seed, of course).
_FREE_SETTINGS = {"seed", "progress", "device"}


@dataclass(frozen=True)
class Spread:
    """Mean, standard deviation (n - 1) and range of one figure over seeds."""

    values: tuple[float, ...]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0

    @property
    def low(self) -> float:
        return min(self.values)

    @property
    def high(self) -> float:
        return max(self.values)

    def text(self, digits: int = 1) -> str:
        """ "mean ± std" as printed in the book's tables."""
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}"


def spread(values: Sequence[float]) -> Spread:
    """A `Spread` of at least one finite value."""
    values = tuple(float(v) for v in values)
    if not values or not all(math.isfinite(v) for v in values):
        raise ValueError(f"spread needs finite values, got {values}")
    return Spread(values)


@dataclass(frozen=True)
class PairedVerdict:
    """How row a compares with row b over seeds (lower perplexity is better)."""

    gaps: tuple[float, ...]  # a - b per seed
    verdict: str  # "better", "worse" or "inconclusive" (a relative to b)

    @property
    def mean_gap(self) -> float:
        return statistics.fmean(self.gaps)

    @property
    def gap_std(self) -> float:
        return statistics.stdev(self.gaps) if len(self.gaps) > 1 else 0.0


def paired_verdict(a: Sequence[float], b: Sequence[float]) -> PairedVerdict:
    """Is a lower (better) than b, seed by seed, by more than the seeds' own noise?"""
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"paired_verdict needs two equal-length lists of >= 2 seeds, got {a}, {b}")
    gaps = tuple(float(x) - float(y) for x, y in zip(a, b, strict=True))
    mean = statistics.fmean(gaps)
    std = statistics.stdev(gaps)
    same_sign = all(g < 0 for g in gaps) or all(g > 0 for g in gaps)
    if same_sign and abs(mean) > std:
        verdict = "better" if mean < 0 else "worse"
    else:
        verdict = "inconclusive"
    return PairedVerdict(gaps, verdict)


def _read(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {run_dir} a finished pipeline directory?")
    manifest = json.loads(path.read_text("utf-8"))
    if "evaluation" not in manifest.get("phases", {}):
        raise ValueError(f"{path}: the run has no evaluation yet; finish it with `pipeline` first")
    return manifest


def summarize_runs(run_dirs: Sequence[str | Path]) -> dict[str, Any]:
    """Every comparison row of the runs, per seed and as mean ± spread.

    The runs must have the same settings apart from the seed, and distinct seeds:
    otherwise the spread would mix a change of settings into the seeds' noise.
    """
    if len(run_dirs) < 2:
        raise ValueError(f"a seed study needs at least 2 runs, got {len(run_dirs)}")
    manifests = [_read(Path(d)) for d in run_dirs]
    first = {k: v for k, v in manifests[0]["settings"].items() if k not in _FREE_SETTINGS}
    for run_dir, manifest in zip(run_dirs, manifests, strict=True):
        other = {k: v for k, v in manifest["settings"].items() if k not in _FREE_SETTINGS}
        if other != first:
            changed = sorted(k for k in set(first) | set(other) if first.get(k) != other.get(k))
            raise ValueError(
                f"{run_dir} differs from {run_dirs[0]} in more than the seed: {changed}"
            )
    seeds = [m["settings"]["seed"] for m in manifests]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"the runs must have distinct seeds, got {seeds}")
    tables = [m["phases"]["evaluation"]["comparison"]["rows"] for m in manifests]
    names = [row["name"] for row in tables[0]]
    domains = list(tables[0][0]["domains"])
    rows = {}
    for name in names:
        per_seed = [next(r for r in table if r["name"] == name) for table in tables]
        columns = {"mixed": [r["mixed"] for r in per_seed]}
        columns.update({d: [r["domains"][d] for r in per_seed] for d in domains})
        rows[name] = {
            "training_tokens": per_seed[0]["training_tokens"],
            "parameters": per_seed[0].get("parameters", 0),
            "perplexity": {
                col: {"per_seed": values, "mean": spread(values).mean, "std": spread(values).std}
                for col, values in columns.items()
            },
        }
    return {
        "format": "modularforge-seed-study",
        "seeds": seeds,
        "runs": [str(d) for d in run_dirs],
        "settings": first,
        "domains": domains,
        "rows": rows,
    }


def verdicts_against(summary: Mapping[str, Any], baseline: str, column: str = "mixed"):
    """Each row's paired verdict against `baseline` on `column` ({row: PairedVerdict})."""
    rows = summary["rows"]
    if baseline not in rows:
        raise KeyError(f"no row {baseline!r}; rows are {list(rows)}")
    reference = rows[baseline]["perplexity"][column]["per_seed"]
    return {
        name: paired_verdict(row["perplexity"][column]["per_seed"], reference)
        for name, row in rows.items()
        if name != baseline
    }


def write_summary(summary: Mapping[str, Any], path: str | Path, command: str) -> Path:
    """Write the summary as JSON, atomically, with the command that produced it."""
    data = {**summary, "command": command}
    return atomic_write_bytes(path, (json.dumps(data, indent=2) + "\n").encode("utf-8"))


def add_seed_study_arguments(parser) -> None:
    """Arguments of `python -m modularforge pipeline-seeds` (registered by `modularforge.cli`)."""
    parser.add_argument("runs", nargs="+", type=Path, help="finished pipeline directories")
    parser.add_argument("--json", type=Path, required=True, help="where to write the summary")
    parser.set_defaults(run=_cmd_seed_study)


def _cmd_seed_study(args) -> int:
    summary = summarize_runs(args.runs)
    command = "python -m modularforge pipeline-seeds " + " ".join(
        [*(str(r) for r in args.runs), "--json", str(args.json)]
    )
    write_summary(summary, args.json, command)
    mixed = {name: row["perplexity"]["mixed"] for name, row in summary["rows"].items()}
    width = max(len(name) for name in mixed) + 2
    print(f"{'mixed perplexity over seeds ' + str(summary['seeds']):<{width}}")
    for name, stats in mixed.items():
        print(f"{name:<{width}}{stats['mean']:>9.1f} ± {stats['std']:.1f}")
    print(f"-> {args.json}", file=sys.stderr)
    return 0


def summary_table(summary: Mapping[str, Any], digits: int = 1) -> str:
    """Mean ± sample standard deviation of every row and column, as aligned text."""
    columns = ["mixed", *summary["domains"]]
    rows = summary["rows"]
    width = max(len(name) for name in rows) + 2
    cells = {
        name: [spread(row["perplexity"][c]["per_seed"]).text(digits) for c in columns]
        for name, row in rows.items()
    }
    cell = max(len(c) for values in cells.values() for c in values) + 2
    head = f"{'':<{width}}{'tokens':>11}{'params':>11}" + "".join(f"{c:>{cell}}" for c in columns)
    lines = [head]
    for name, row in rows.items():
        lines.append(
            f"{name:<{width}}{row['training_tokens']:>11,}{row['parameters']:>11,}"
            + "".join(f"{c:>{cell}}" for c in cells[name])
        )
    return "\n".join(lines)


def plot_seed_study(
    summary: Mapping[str, Any],
    column: str = "mixed",
    reference: str | None = "dense",
    ax=None,
):
    """Each system's perplexity on `column`: one dot per seed, the mean ± std as a bar.

    A vertical line marks the `reference` row's mean, so a reader sees at once which
    systems sit left of it (better) and whether their seeds' spread crosses it.
    """
    import matplotlib.pyplot as plt

    rows = summary["rows"]
    names = list(rows)
    if ax is None:
        _, ax = plt.subplots(figsize=(7.5, 0.45 * len(names) + 1.6), layout="constrained")
    for y, name in enumerate(names):
        stats = rows[name]["perplexity"][column]
        values = stats["per_seed"]
        ax.errorbar(stats["mean"], y, xerr=stats["std"], fmt="s", color="black", capsize=4,
                    markersize=6, zorder=3)  # fmt: skip
        ax.scatter(values, [y] * len(values), color="tab:blue", alpha=0.6, s=28, zorder=2)
    if reference is not None and reference in rows:
        ax.axvline(rows[reference]["perplexity"][column]["mean"], color="tab:red", ls="--",
                   lw=1, label=f"{reference} (mean)")  # fmt: skip
        ax.legend(loc="lower right", fontsize=9)
    ax.set_yticks(range(len(names)), labels=names)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel(f"perplexity on {column} validation text (log scale; lower is better)")
    seeds = ", ".join(str(s) for s in summary["seeds"])
    ax.set_title(f"Seeds {seeds}: dots per seed, squares mean ± std")
    return ax

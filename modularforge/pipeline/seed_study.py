"""The same pipeline run with several seeds: mean, spread, and verdicts that respect them.

One run of the tiny pipeline decides nothing about small gaps: a different seed
changes the initialisation, the dropout masks and the batch order, and with them
every perplexity. This module reads finished pipeline directories that differ
only in their seed, and summarises each comparison row over the seeds.

Verdicts use the book's one rule, `modularforge.measure.spread.range_verdict`: a row is
"better" than another only when its whole min-max range over the seeds lies below
the other's (every seed of it beats every seed of the other), "worse" in the mirror
case, and "inconclusive" when the ranges overlap. They are computed from the stored
per-seed values whenever they are asked for, never stored.

    python -m modularforge pipeline-seeds RUN_DIR [RUN_DIR ...] --json OUT.json
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modularforge.files.atomic import atomic_write_bytes
from modularforge.files.finite_json import dumps_finite
from modularforge.measure.spread import Spread, range_verdict, spread
from modularforge.pipeline.manifest import MANIFEST_NAME, ManifestError, read_manifest_json

__all__ = [
    "SeedVerdict",
    "Spread",
    "plot_seed_study",
    "seed_verdict",
    "spread",
    "summarize_runs",
    "summary_table",
    "verdicts_against",
    "write_summary",
]

#: Settings that may differ between the runs of one study (and the seed, of course).
_FREE_SETTINGS = {"seed", "progress", "device"}


@dataclass(frozen=True)
class SeedVerdict:
    """How row a compares with row b over seeds (lower perplexity is better)."""

    a: Spread  # row a's values over the seeds
    b: Spread  # row b's values, the same seeds
    verdict: str  # "better", "worse" or "inconclusive" (a relative to b)

    @property
    def gaps(self) -> tuple[float, ...]:
        """a - b, seed by seed (for reading; the verdict does not use the pairing)."""
        return tuple(x - y for x, y in zip(self.a.values, self.b.values, strict=True))

    @property
    def mean_gap(self) -> float:
        return self.a.mean - self.b.mean


#: `range_verdict`'s words, read as perplexities (lower is better).
_WORDS = {"lower": "better", "higher": "worse", "inconclusive": "inconclusive"}


def seed_verdict(a: Sequence[float], b: Sequence[float]) -> SeedVerdict:
    """Is row a better (lower perplexity) than row b over the seeds?

    The book's one rule, `modularforge.measure.spread.range_verdict`: "better" only when
    a's whole min-max range lies below b's, "worse" when above, else
    "inconclusive". Needs the same >= 3 seeds on both sides.
    """
    if len(a) != len(b):
        raise ValueError(f"seed_verdict needs the same seeds on both sides, got {a} and {b}")
    sa, sb = spread(a), spread(b)
    return SeedVerdict(sa, sb, _WORDS[range_verdict(sa, sb)])


def _read(run_dir: Path) -> dict[str, Any]:
    """A finished run's manifest, read as the pipeline reads it, plus what a seed study needs.

    The size is capped as the pipeline caps it, FIFOs and devices are refused, and the
    fields the study averages are checked by name, so a damaged manifest is an error
    that names the file and field instead of a traceback.
    """
    path = Path(run_dir) / MANIFEST_NAME
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {run_dir} a finished pipeline directory?")
    manifest = _load_json(path)
    if not isinstance(manifest.get("phases"), dict) or "evaluation" not in manifest["phases"]:
        raise ValueError(f"{path}: the run has no evaluation yet; finish it with `pipeline` first")
    settings = manifest.get("settings")
    seed = settings.get("seed") if isinstance(settings, dict) else None
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ManifestError(f"{path}: field settings.seed must be an integer, got {seed!r}")
    evaluation = manifest["phases"]["evaluation"]
    comparison = evaluation.get("comparison") if isinstance(evaluation, dict) else None
    rows = comparison.get("rows") if isinstance(comparison, dict) else None
    if not isinstance(rows, list) or not rows:
        raise ManifestError(
            f"{path}: field phases.evaluation.comparison.rows must be a non-empty list"
        )
    for i, row in enumerate(rows):
        where = f"{path}: field phases.evaluation.comparison.rows[{i}]"
        if not isinstance(row, dict) or not isinstance(row.get("name"), str):
            raise ManifestError(f"{where} must be an object with a string name")
        numbers = [row.get("mixed"), *(row.get("domains") or {}).values()]
        if not isinstance(row.get("domains"), dict) or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
            for x in numbers
        ):
            raise ManifestError(
                f"{where} needs a finite number 'mixed' and an object 'domains' of them"
            )
    return manifest


def _load_json(path: Path) -> dict[str, Any]:
    """`path` as a JSON object, read as the pipeline reads its manifests."""
    manifest = read_manifest_json(path, "point pipeline-seeds at finished pipeline folders")
    if not isinstance(manifest, dict):
        raise ManifestError(
            f"{path}: the top level must be an object, got {type(manifest).__name__}"
        )
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
    for run_dir, table in zip(run_dirs, tables, strict=True):
        shape = ([row["name"] for row in table], [sorted(row["domains"]) for row in table])
        if shape != (names, [sorted(domains)] * len(names)):
            raise ValueError(
                f"{run_dir}: its comparison rows or domains differ from {run_dirs[0]}'s "
                f"({shape[0]} against {names}); were the runs made by the same pipeline?"
            )
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
    """Each row's verdict against `baseline` on `column` ({row: SeedVerdict}).

    Recomputed from the per-seed values every time, so a stored file cannot carry a
    stale verdict.
    """
    rows = summary["rows"]
    if baseline not in rows:
        raise KeyError(f"no row {baseline!r}; rows are {list(rows)}")
    reference = rows[baseline]["perplexity"][column]["per_seed"]
    return {
        name: seed_verdict(row["perplexity"][column]["per_seed"], reference)
        for name, row in rows.items()
        if name != baseline
    }


def write_summary(summary: Mapping[str, Any], path: str | Path, command: str) -> Path:
    """Write the summary as JSON, atomically, with the command that produced it."""
    data = {**summary, "command": command}
    return atomic_write_bytes(
        path, (dumps_finite(data, str(path), indent=2) + "\n").encode("utf-8")
    )


def add_seed_study_arguments(parser) -> None:
    """Arguments of `python -m modularforge pipeline-seeds` (registered by `modularforge.cli.main`)."""
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

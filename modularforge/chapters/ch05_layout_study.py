"""Chapter 5's "why one expert per layer?" over several seeds, with a zero-FFN control.

One seed of `compare_expert_layouts` at two layers cannot resolve the gaps it
produces (a few thousandths of a nat). This study repeats the whole experiment per
seed -- phase 1 trains a fresh trunk from that seed, then every arm is trained on
the frozen trunk with that seed's initialisation and batch order -- and scores
each arm on the package's balanced validation (`evaluate_validation`: for the
mixed corpus, the same number of windows from every domain, here all of them).

Arms (see `modularforge.chapters.ch05_qa_experiments.ARMS`): the design's per-layer expert, one
FFN shared by all layers, one shared FFN `n_layers` times as wide (as many
parameters as the per-layer expert), and the zero-FFN control (the frozen trunk
alone), which says whether expert capacity matters at all.

Verdicts are never stored: `study_verdicts` recomputes them from the per-seed
losses with `modularforge.measure.spread.range_verdict`, the book's one rule.

    OMP_NUM_THREADS=1 python -m modularforge.chapters.ch05_layout_study --json book/data/layout-study-tiny.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from modularforge.chapters.ch05_qa_experiments import ARMS, compare_expert_layouts
from modularforge.files.atomic import atomic_write_bytes
from modularforge.measure.spread import MIN_SEEDS, Spread, range_verdict, spread
from modularforge.model.config import ModelConfig
from modularforge.training.data import DomainData, load_domain, load_mixed, validation_batches
from modularforge.training.train import TrainSettings, train_shared

__all__ = [
    "LayoutStudySettings",
    "LayoutVerdict",
    "arm_spreads",
    "layout_verdict",
    "plot_layout_study",
    "read_study",
    "run_layout_study",
    "study_verdicts",
    "write_study",
]

FORMAT = "modularforge-layout-study"
#: Every arm the study trains, in the order the book prints them.
STUDY_ARMS = ("per_layer", "shared", "shared_wide", "zero_ffn")
#: The comparisons the verdicts read: (arm a, arm b), each "is a lower than b?".
COMPARISONS = (
    ("per_layer", "shared"),
    ("per_layer", "shared_wide"),
    ("per_layer", "zero_ffn"),
    ("shared", "zero_ffn"),
)


@dataclass(frozen=True)
class LayoutStudySettings:
    """Everything the study's numbers depend on (stored in the JSON next to them)."""

    preset: str = "tiny"
    n_layers: int = 4  # the tiny preset has 2; more layers give "per layer" room to matter
    seeds: tuple[int, ...] = (0, 1, 2)
    phase1_steps: int = 300  # phase 1 (trunk + temporary FFNs) per seed
    expert_steps: int = 300  # each trained arm, per seed
    batch_size: int = 16
    seq_len: int = 64
    eval_every: int = 100
    domain: str = "mixed"  # what the arms train on and are scored on

    def __post_init__(self) -> None:
        if len(self.seeds) < MIN_SEEDS or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(
                f"the layout study needs >= {MIN_SEEDS} distinct seeds, got {list(self.seeds)}"
            )
        if self.n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {self.n_layers}")

    def config(self) -> ModelConfig:
        return ModelConfig.preset(self.preset).replace(n_layers=self.n_layers)

    def train_settings(self, steps: int, seed: int, eval_batches: int) -> TrainSettings:
        return TrainSettings(
            steps=steps,
            batch_size=self.batch_size,
            seq_len=self.seq_len,
            eval_every=self.eval_every,
            eval_batches=eval_batches,
            seed=seed,
            device="cpu",
            progress=False,
        )


def _load(domain: str, vocab_size: int) -> DomainData:
    return load_mixed(vocab_size) if domain == "mixed" else load_domain(domain, vocab_size)


def _validation_summary(data: DomainData, batch_size: int, seq_len: int) -> dict[str, Any]:
    """How many batches cover the whole (balanced) validation, and what they hold."""
    batches = list(validation_batches(data, batch_size, seq_len))
    windows = sum(len(inputs) for inputs, _ in batches)
    return {
        "kind": "balanced mixed (equal windows per domain)" if data.val_parts else "one domain",
        "domains": list(data.val_parts) if data.val_parts else [data.name],
        "windows": windows,
        "tokens": windows * seq_len,
        "batches": len(batches),
    }


def run_layout_study(
    settings: LayoutStudySettings = LayoutStudySettings(),
    log: Callable[[str], None] = lambda line: None,
    data: DomainData | None = None,
) -> dict[str, Any]:
    """Run phase 1 and every arm for every seed; return the JSON-ready study.

    Per seed: `train_shared` from that seed (the trunk, its batches and its temporary
    FFNs all follow the seed), then `compare_expert_layouts` on that frozen trunk
    with the same seed. Validation is the whole balanced split at every evaluation,
    so each final loss scores the same windows for every arm and seed. `data`
    replaces the corpus named by `settings.domain` (tests pass a small one).
    """
    config = settings.config()
    data = data if data is not None else _load(settings.domain, config.vocab_size)
    validation = _validation_summary(data, settings.batch_size, settings.seq_len)
    n_eval = validation["batches"]
    started = time.perf_counter()
    phase1: list[float] = []
    arms: dict[str, dict[str, Any]] = {
        arm: {"label": ARMS[arm], "val_loss": [], "curves": []} for arm in STUDY_ARMS
    }
    for seed in settings.seeds:
        shared, history = train_shared(
            config, settings.train_settings(settings.phase1_steps, seed, n_eval), data
        )
        phase1.append(history.val_loss[-1])
        log(f"seed {seed}: phase 1 {history.val_loss[-1]:.4f} nats")
        comparison = compare_expert_layouts(
            shared,
            data,
            settings.train_settings(settings.expert_steps, seed, n_eval),
            arms=STUDY_ARMS,
            seed=seed,
        )
        for result in comparison.arms:
            entry = arms[result.arm]
            entry["trainable_parameters"] = result.trainable_parameters
            entry["val_loss"].append(result.final_val_loss)
            entry["curves"].append(
                {"seed": seed, "steps": list(result.eval_steps), "val_loss": list(result.val_loss)}
            )
            log(f"seed {seed}: {result.arm:<12} {result.final_val_loss:.4f} nats")
    return {
        "format": FORMAT,
        "settings": {**asdict(settings), "seeds": list(settings.seeds)},
        "config": asdict(config),
        "validation": validation,
        "phase1_val_loss": phase1,
        "arms": arms,
        "seconds": round(time.perf_counter() - started, 1),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def write_study(study: Mapping[str, Any], path: str | Path, command: str) -> Path:
    """Write the study as JSON, atomically, with the command that produced it."""
    data = {**study, "command": command}
    return atomic_write_bytes(path, (json.dumps(data, indent=2) + "\n").encode("utf-8"))


def read_study(path: str | Path) -> dict[str, Any]:
    """Load a stored study and check it holds what the verdicts need."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found; make it with `python -m modularforge.chapters.ch05_layout_study --json {path}`"
        )
    study = json.loads(path.read_text("utf-8"))
    if study.get("format") != FORMAT:
        raise ValueError(f"{path} is not a layout study (format {study.get('format')!r})")
    missing = [arm for arm in STUDY_ARMS if arm not in study.get("arms", {})]
    if missing:
        raise ValueError(f"{path} lacks the arms {missing}; rerun the study")
    return study


def arm_spreads(study: Mapping[str, Any]) -> dict[str, Spread]:
    """Each arm's final validation loss over seeds, recomputed from the per-seed values."""
    return {arm: spread(entry["val_loss"]) for arm, entry in study["arms"].items()}


def study_verdicts(study: Mapping[str, Any]) -> dict[tuple[str, str], str]:
    """`range_verdict` of every pair in `COMPARISONS` ("lower" means a beats b)."""
    spreads = arm_spreads(study)
    return {(a, b): range_verdict(spreads[a], spreads[b]) for a, b in COMPARISONS}


@dataclass(frozen=True)
class LayoutVerdict:
    """The study's answer to "why one expert per layer?", worked out from the numbers."""

    verdict: str  # "holds", "holds with a correction", "inconclusive", "does not hold"
    capacity: str  # the per-layer expert against no FFN at all: "lower", "higher", ...
    versus_shared: str  # per-layer against one shared FFN of the same width
    versus_wide: str  # per-layer against one shared FFN with as many parameters
    reason: str  # one sentence, built from the verdicts


def layout_verdict(study: Mapping[str, Any]) -> LayoutVerdict:
    """Decide from the per-seed losses whether one FFN per layer pays for itself.

    *holds*: the per-layer expert is lower than both shared arms on every seed;
    *holds with a correction*: lower than the same-width shared FFN but not the
    equal-parameter one (parameter count explains the gain); *inconclusive*: the
    spreads of the per-layer and same-width arms overlap; *does not hold*: the
    per-layer expert is higher.
    """
    v = study_verdicts(study)
    capacity = v[("per_layer", "zero_ffn")]
    versus_shared = v[("per_layer", "shared")]
    versus_wide = v[("per_layer", "shared_wide")]
    if versus_shared == "inconclusive":
        verdict = "inconclusive"
        reason = (
            "the per-layer expert's losses over the seeds overlap those of one FFN reused "
            "at every layer, so the seeds' own spread covers the gap"
        )
    elif versus_shared == "higher":
        verdict = "does not hold"
        reason = "one FFN per layer ended higher than one FFN reused at every layer, on every seed"
    elif versus_wide == "lower":
        verdict = "holds"
        reason = (
            "one FFN per layer ended lower than a single shared FFN on every seed, "
            "even one with as many parameters"
        )
    else:
        verdict = "holds with a correction"
        reason = (
            "one FFN per layer beat a shared FFN of the same width on every seed, but not "
            "one with as many parameters, so the gain comes from parameter count"
        )
    return LayoutVerdict(verdict, capacity, versus_shared, versus_wide, reason)


def plot_layout_study(
    study: Mapping[str, Any],
    ax=None,
    arms: Sequence[str] | None = None,
    connect_seeds: bool = False,
):
    """Final validation loss per arm: one dot per seed, the min-max range as a bar.

    The range is what `range_verdict` reads, so two arms whose bars overlap are
    exactly the pairs it calls inconclusive. A short horizontal tick marks the mean.
    `connect_seeds` joins each seed's dots with a dotted line: the arms of one seed
    share a trunk, so the lines show the pairing the range rule deliberately ignores.
    """
    import matplotlib.pyplot as plt

    arms = list(arms) if arms is not None else list(study["arms"])
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    seeds = study["settings"]["seeds"]
    markers = "os^Dvp<>"
    spreads = arm_spreads(study)
    for x, arm in enumerate(arms):
        s = spreads[arm]
        ax.vlines(x, s.low, s.high, color="black", lw=2, zorder=2)
        ax.hlines(s.mean, x - 0.18, x + 0.18, color="black", lw=1.5, zorder=2)
        for i, (seed, value) in enumerate(zip(seeds, s.values, strict=True)):
            ax.scatter(x + 0.08 * (i - (len(seeds) - 1) / 2), value, marker=markers[i % 8],
                       color=f"C{i}", s=30, zorder=3, label=f"seed {seed}" if x == 0 else None)  # fmt: skip
    if connect_seeds:
        for i in range(len(seeds)):
            xs = [x + 0.08 * (i - (len(seeds) - 1) / 2) for x in range(len(arms))]
            ax.plot(xs, [spreads[arm].values[i] for arm in arms], color=f"C{i}", lw=0.8,
                    ls=":", zorder=1)  # fmt: skip
    labels = [
        f"{arm}\n{study['arms'][arm].get('trainable_parameters', 0):,} params" for arm in arms
    ]
    ax.set_xticks(range(len(arms)), labels=labels, fontsize=8)
    ax.set_xlim(-0.6, len(arms) - 0.4)
    ax.set_ylabel("final validation loss (nats)")
    return ax


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    defaults = LayoutStudySettings()
    parser = argparse.ArgumentParser(
        prog="python -m modularforge.chapters.ch05_layout_study",
        description="Chapter 5's expert-layout study over seeds (writes a JSON file).",
    )
    parser.add_argument("--json", type=Path, required=True, help="where to write the study")
    parser.add_argument("--preset", choices=["tiny", "seed"], default=defaults.preset)
    parser.add_argument("--n-layers", type=int, default=defaults.n_layers)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(defaults.seeds))
    parser.add_argument("--phase1-steps", type=int, default=defaults.phase1_steps)
    parser.add_argument("--expert-steps", type=int, default=defaults.expert_steps)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--seq-len", type=int, default=defaults.seq_len)
    parser.add_argument("--eval-every", type=int, default=defaults.eval_every)
    parser.add_argument("--domain", default=defaults.domain, help='"mixed" or one domain')
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m modularforge.chapters.ch05_layout_study --json OUT [options]`."""
    args = _parse(argv)
    try:
        settings = LayoutStudySettings(
            preset=args.preset,
            n_layers=args.n_layers,
            seeds=tuple(args.seeds),
            phase1_steps=args.phase1_steps,
            expert_steps=args.expert_steps,
            batch_size=args.batch_size,
            seq_len=args.seq_len,
            eval_every=args.eval_every,
            domain=args.domain,
        )
        study = run_layout_study(settings, log=lambda line: print(line, flush=True))
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    argv = list(sys.argv[1:] if argv is None else argv)
    command = "python -m modularforge.chapters.ch05_layout_study " + " ".join(argv)
    write_study(study, args.json, command)
    for arm, s in arm_spreads(study).items():
        print(f"{arm:<12} {s.range_text(4)}  (mean (min–max) over seeds {settings.seeds})")
    print(f"verdict: {layout_verdict(study).verdict}")
    print(f"-> {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

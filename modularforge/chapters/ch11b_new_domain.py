"""A domain that arrives later: what each way of adding it gains on it, and what it costs the old ones.

The design's promise is that experts are trained one at a time and assembled later, so
a domain that shows up after phase 1 can be added without touching what exists. This
study tests that against the alternatives, per seed, from one shared starting point:
phase 1 on the three shipped domains (`train_phase1`), plus one expert per old domain
branched from the phase-1 FFNs. Then Perl (`data/later/perl.txt`), which no trunk or
tokenizer here was trained on, arrives. Arms:

* A_finetune: the whole phase-1 model trained further on Perl alone;
* B_replay: the same, with half the training stream replayed from the old domains;
* C_expert: a new expert on the frozen trunk, branched from the phase-1 FFNs, old
  experts untouched; label routing (each domain to its own expert);
* C_expert_2x: C with twice the FLOPs; C_from_python: C branched from the python expert
  (the closest old domain) instead: two ways to close C's gap to A;
* D_branch: BTM-style, the whole phase-1 model branched and trained on Perl while the
  old model keeps serving the old domains. Its training run is A's (the same model,
  data and steps), so it is not trained twice: its Perl loss is A's and its old
  domains are the untouched phase-1 model's. What it pays is a second whole model.

Matched FLOPs: A, B and D train `dense_steps` steps; a C step costs 0.76 of a dense
step (the frozen trunk computes no weight gradients; `mixture_accounting`), so C gets
as many steps as the same FLOPs buy. Every arm runs the same three-point grid of peak
learning rates (`lr_grid`); the report uses each arm's best rate by mean Perl gain.

Measured per arm, rate and seed: the Perl loss and each old domain's loss, on the same
fixed validation windows, and the training seconds. Gain = the phase-1 model's Perl loss
minus the arm's; forgetting = an old domain's loss after minus before, in the arm's own
system (the dense model for A and B, the label-routed experts for C).

    OMP_NUM_THREADS=1 python -m modularforge.chapters.ch11b_new_domain --json book/data/new-domain-study.json
"""

from __future__ import annotations

import argparse
import copy
import shlex
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from modularforge.chapters.ch11_mixture_study import (
    _domain_windows,
    domain_losses,
    read_stored,
    write_study,
)
from modularforge.chapters.ch11_study_memory import mixing_memory
from modularforge.measure.mixture_accounting import phase_step_flops
from modularforge.mixture.branching import train_expert_from
from modularforge.model.config import ModelConfig
from modularforge.training.data import (
    EOT_TOKEN,
    Batch,
    DomainData,
    load_domain,
    load_mixed,
    load_tokenizer,
)
from modularforge.training.text_domain import later_domain
from modularforge.training.train import TrainSettings, fit, train_phase1

__all__ = ["ARMS", "NewDomainSettings", "matched_expert_steps", "read_new_domain_study",
           "replay_data", "run_new_domain_study"]  # fmt: skip

FORMAT = "modularforge-new-domain-study"
ARMS = {
    "A_finetune": "(A) fine-tune the whole model on the new domain",
    "B_replay": "(B) fine-tune the whole model, half the stream replayed from old domains",
    "C_expert": "(C) new expert on the frozen trunk, branched from the phase-1 FFN",
    "C_expert_2x": "(C) the same with twice the FLOPs",
    "C_from_python": "(C) new expert branched from the python expert instead",
    "D_branch": "(D) BTM-style: the whole model branched, the old model kept",
}


@dataclass(frozen=True)
class NewDomainSettings:
    """Everything the study's numbers depend on (stored in the JSON next to them)."""

    preset: str = "tiny"
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    old_domains: tuple[str, ...] = ("english", "licenses", "python")
    new_domain: str = "perl"
    phase1_steps: int = 700
    lr: float = 2.5e-3  # phase 1's peak rate: chapter 11's sweep's best for the whole model
    expert_steps: int = 80  # each old domain's expert
    later_lr: float = 1e-3  # the old experts' rate (chapter 11's continuing rate)
    later_warmup: int = 10
    dense_steps: int = 200  # A, B and D; C gets the same FLOPs
    lr_grid: tuple[float, ...] = (1e-3, 3e-3, 1e-2)  # every arm's peak rate on the new domain
    replay_fraction: float = 0.5
    closest_old: str = "python"
    batch_size: int = 16
    seq_len: int = 64
    windows_per_domain: int = 48

    def train(self, steps: int, seed: int, lr: float, warmup: int = 10) -> TrainSettings:
        return TrainSettings(steps=steps, batch_size=self.batch_size, seq_len=self.seq_len,
                             lr=lr, warmup_steps=warmup, eval_every=steps, eval_batches=1,
                             seed=seed, device="cpu", progress=False)  # fmt: skip


def matched_expert_steps(settings: NewDomainSettings) -> int:
    """The expert steps that cost the FLOPs of `dense_steps` whole-model steps."""
    config = ModelConfig.preset(settings.preset)
    args = (config, settings.batch_size, settings.seq_len)
    dense, expert = phase_step_flops(*args, "dense"), phase_step_flops(*args, "expert")
    return round(settings.dense_steps * dense / expert)


def replay_data(
    new: DomainData, old: Mapping[str, DomainData], fraction: float, eot: int
) -> DomainData:
    """New-domain training tokens joined with old-domain tokens making up `fraction` of the stream.

    Random windows of the joined stream then come from the old domains `fraction` of the
    time on average. Each old domain contributes an equal slice from the start of its
    training split (a replay buffer, not the whole old corpus); validation is the new domain's.
    """
    n_old = round(len(new.train) * fraction / (1 - fraction))
    per_domain = n_old // len(old)
    separator = torch.tensor([eot], dtype=torch.int64)
    pieces = [new.train]
    for data in old.values():
        pieces += [separator, data.train[:per_domain]]
    return DomainData(name=f"{new.name}+replay", train=torch.cat(pieces), val=new.val)


@dataclass(frozen=True)
class StudyData:
    """What every seed reads: loaded and tokenised once per study, not once per seed."""

    mixed: DomainData  # phase 1's corpus (the old domains)
    old: dict[str, DomainData]  # each old domain, for its expert
    new: DomainData  # the domain that arrives later
    replay: DomainData  # the new domain's stream with old-domain replay (arm B)
    windows: dict[str, Batch]  # the fixed validation windows of every domain, old and new


def load_study_data(settings: NewDomainSettings) -> StudyData:
    """The corpora, the replay stream and the scoring windows the settings ask for."""
    config = ModelConfig.preset(settings.preset)
    mixed = load_mixed(config.vocab_size)
    old = {name: load_domain(name, config.vocab_size) for name in settings.old_domains}
    new = later_domain(settings.new_domain, config.vocab_size)
    scoring = DomainData("scoring", mixed.train, mixed.val, {**mixed.val_parts, new.name: new.val})
    eot = load_tokenizer(config.vocab_size).token_to_id(EOT_TOKEN)
    return StudyData(
        mixed=mixed, old=old, new=new,
        replay=replay_data(new, old, settings.replay_fraction, eot),
        windows=_domain_windows(scoring, settings.seq_len, settings.windows_per_domain),
    )  # fmt: skip


def run_seed(
    settings: NewDomainSettings, seed: int, data: StudyData, log: Callable[[str], None]
) -> dict[str, Any]:
    """Phase 1, the old experts, then every arm at every rate, for one seed."""
    config = ModelConfig.preset(settings.preset)
    mixed, old, new, windows = data.mixed, data.old, data.new, data.windows
    every = [*settings.old_domains, new.name]

    def losses(model, names) -> dict[str, float]:
        return domain_losses(model, {n: windows[n] for n in names}, settings.batch_size)

    scaffold, _ = train_phase1(
        config, settings.train(settings.phase1_steps, seed, settings.lr, 30), mixed
    )
    dense_start = copy.deepcopy(scaffold)  # A, B and D train every weight of this copy
    before = losses(scaffold, every)
    shared = scaffold.shared.freeze()
    old_experts = {}
    for idx, name in enumerate(settings.old_domains):
        model, _ = train_expert_from(shared, old[name], settings.train(settings.expert_steps, seed,
                                     settings.later_lr), "branched", scaffold.experts, expert_idx=idx)  # fmt: skip
        old_experts[name] = model
    old_system = {n: losses(m, [n])[n] for n, m in old_experts.items()}
    with torch.no_grad():  # each old expert's logits on four windows of its own domain
        reference = {n: m.eval()(windows[n][0][:4]) for n, m in old_experts.items()}

    matched = matched_expert_steps(settings)
    n_old = len(settings.old_domains)
    runs: dict[str, dict[str, Any]] = {arm: {} for arm in ARMS}
    for lr in settings.lr_grid:
        key = repr(lr)
        for arm, stream in (("A_finetune", new), ("B_replay", data.replay)):
            model = copy.deepcopy(dense_start)
            history = fit(model, stream, settings.train(settings.dense_steps, seed, lr), arm)
            runs[arm][key] = {**losses(model, every), "seconds": history.seconds}
        runs["D_branch"][key] = {**{n: before[n] for n in settings.old_domains},
                                 new.name: runs["A_finetune"][key][new.name],
                                 "seconds": runs["A_finetune"][key]["seconds"]}  # fmt: skip
        for arm, steps, source in (("C_expert", matched, scaffold.experts),
                                   ("C_expert_2x", 2 * matched, scaffold.experts),
                                   ("C_from_python", matched, old_experts[settings.closest_old].experts)):  # fmt: skip
            model, history = train_expert_from(shared, new, settings.train(steps, seed, lr),
                                               "branched", source, expert_idx=n_old)  # fmt: skip
            runs[arm][key] = {**old_system, new.name: losses(model, [new.name])[new.name],
                              "seconds": history.seconds}  # fmt: skip
        log(f"seed {seed}, lr {lr:g}: " + ", ".join(
            f"{arm} {runs[arm][key][new.name]:.3f}" for arm in ARMS))  # fmt: skip
    with torch.no_grad():  # label routing: the old experts must not have moved by one bit
        unchanged = all(
            torch.equal(m.eval()(windows[n][0][:4]), reference[n]) for n, m in old_experts.items()
        )
    return {"before": before, "old_system": old_system, "runs": runs,
            "old_outputs_bit_identical": unchanged, "expert_steps_matched": matched}  # fmt: skip


def run_new_domain_study(
    settings: NewDomainSettings | None = None, log: Callable[[str], None] = lambda line: None
) -> dict[str, Any]:
    """Every seed; the JSON-ready study (plus each kind of step's peak memory)."""
    settings = settings or NewDomainSettings()
    started = time.perf_counter()
    data = load_study_data(settings)
    seeds = []
    for seed in settings.seeds:
        seeds.append({"seed": seed, **run_seed(settings, seed, data, log)})
        log(f"seed {seed} done ({time.perf_counter() - started:.0f} s)")
    memory = mixing_memory(settings.preset, settings.batch_size, settings.seq_len)["rows"]
    stored = {**asdict(settings), "seeds": list(settings.seeds), "old_domains": list(settings.old_domains),
              "lr_grid": list(settings.lr_grid)}  # fmt: skip
    return {"format": FORMAT, "settings": stored, "arms": dict(ARMS), "per_seed": seeds,
            "memory": {k: v for k, v in memory.items() if not k.startswith("mixing")},
            "seconds": time.perf_counter() - started}  # fmt: skip


def read_new_domain_study(path: str | Path) -> dict[str, Any]:
    """Load a stored study, refusing files of another format."""
    return read_stored(path, FORMAT)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", required=True, help="where to write the study")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(NewDomainSettings.seeds))
    parser.add_argument(
        "--lr", type=float, default=NewDomainSettings.lr, help="phase 1's peak rate"
    )
    args = parser.parse_args(argv)
    study = run_new_domain_study(NewDomainSettings(seeds=tuple(args.seeds), lr=args.lr),
                                 log=lambda line: print(line, flush=True))  # fmt: skip
    command = "OMP_NUM_THREADS=1 python -m modularforge.chapters.ch11b_new_domain " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    write_study(study, args.json, command)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The learning-rate sweep behind chapter 11's study: the same three-point grid for dense and for the later stages.

A comparison is fair only if every arm had the same chance to be tuned. Dense gets a
grid of five peak rates for its whole-model run; phase 1, which is the same whole-model
run stopped earlier, uses dense's best. The modular system's later stages (experts and
mixing) then get a grid of five rates of their own, trained from that phase 1. Each
grid point costs one run per seed, so both sides get five runs per seed.

The grid was grown until its best point was inside it: the first sweep (5e-3, 1e-2,
2e-2) found the lowest rate best, so 2.5e-3 and 1.25e-3 were added
(`lr-sweep-tiny-dense-low.json`), and the later stages were swept from a phase 1 at
the new best rate (`lr-sweep-tiny-later.json`).

The sweep runs on its own seeds (`SWEEP_SEEDS`), never on the study's: choosing a rate
on the seeds that then report the result would flatter whichever side had the noisier
grid. Scores are the mixed validation loss of `ch11_mixture_study` (equal windows of
every domain).

    OMP_NUM_THREADS=1 python -m modularforge.chapters.ch11_lr_sweep --json book/data/lr-sweep-tiny.json
"""

from __future__ import annotations

import argparse
import copy
import shlex
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from modularforge.chapters.ch11_mixture_study import (
    MixtureStudySettings,
    _domain_windows,
    _score,
    _settings_dict,
    domain_losses,
    read_stored,
    write_study,
)
from modularforge.mixture.branching import branch_expert, train_expert_from
from modularforge.mixture.mixing import train_mixing
from modularforge.mixture.routing import build_mixture
from modularforge.model.config import ModelConfig
from modularforge.training.data import load_domain, load_mixed
from modularforge.training.train import train_phase1

__all__ = ["DENSE_GRID", "LATER_GRID", "SWEEP_SEEDS", "best_rates", "read_sweep", "run_sweep"]

FORMAT = "modularforge-lr-sweep"
#: Seeds used for tuning only; the study reports seeds 0-4.
SWEEP_SEEDS = (100, 101)
#: Dense's peak rate: the package default 1e-2, then halving until the best is bracketed.
DENSE_GRID = (1.25e-3, 2.5e-3, 5e-3, 1e-2, 2e-2)
#: The later stages' peak rate, from below phase 1's final rate (2.5e-4 after a 2.5e-3
#: phase 1) to well above it: five points, as many as dense gets.
LATER_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
#: The later-stage arms the sweep scores (the oracle arm needs no mixing).
LATER_ARMS = ("branched_oracle", "mix_router", "mix_shared")


def _later_arms(settings: MixtureStudySettings, seed: int, scaffold, mixed, domains, windows):
    """The branched experts, then both mixing stages, at `settings.later_lr`; their scores."""
    shared = scaffold.shared
    bs = settings.batch_size
    branched, own = [], {}
    for idx, (name, data) in enumerate(domains.items()):
        model, _ = train_expert_from(shared, data, settings.train(settings.expert_steps, seed, later=True),
                                     "branched", scaffold.experts, expert_idx=idx)  # fmt: skip
        own[name] = domain_losses(model, {name: windows[name]}, bs)[name]
        branched.append(model.experts)
    out = {"branched_oracle": _score(own)["mixed"]}
    base = build_mixture(shared, branched, settings.routing, generalist=branch_expert(scaffold.experts),
                         aux_loss_weight=settings.aux_loss_weight, router_input=settings.router_input)  # fmt: skip
    for arm, trainable in (("mix_router", "router"), ("mix_shared", settings.shared_trainable)):
        moe = copy.deepcopy(base)
        train_mixing(moe, mixed, settings.train(settings.mixing_steps, seed, later=True), trainable,
                     freeze_experts=True)  # fmt: skip
        out[arm] = _score(domain_losses(moe, windows, bs))["mixed"]
    return out


def run_sweep(
    settings: MixtureStudySettings | None = None,
    seeds: Sequence[int] = SWEEP_SEEDS,
    dense_grid: Sequence[float] = DENSE_GRID,
    later_grid: Sequence[float] = LATER_GRID,
    log: Callable[[str], None] = lambda line: None,
) -> dict[str, Any]:
    """Per seed: dense at every rate of `dense_grid`, phase 1 once, the later stages at every rate."""
    settings = settings or MixtureStudySettings()
    config = ModelConfig.preset(settings.preset)
    mixed = load_mixed(config.vocab_size)
    domains = {name: load_domain(name, config.vocab_size) for name in settings.domains}
    windows = _domain_windows(mixed, settings.seq_len, settings.windows_per_domain)
    started = time.perf_counter()
    dense: dict[str, list[float]] = {repr(lr): [] for lr in dense_grid}
    later: dict[str, dict[str, list[float]]] = {
        repr(lr): {arm: [] for arm in LATER_ARMS} for lr in later_grid
    }
    phase1: list[float] = []
    for seed in seeds:
        for lr in dense_grid:
            model, _ = train_phase1(
                config, replace(settings, lr=lr).train(settings.budget_steps, seed), mixed
            )
            dense[repr(lr)].append(
                _score(domain_losses(model, windows, settings.batch_size))["mixed"]
            )
        if not later_grid:
            log(f"seed {seed} done ({time.perf_counter() - started:.0f} s)")
            continue
        scaffold, _ = train_phase1(config, settings.train(settings.phase1_steps, seed), mixed)
        phase1.append(_score(domain_losses(scaffold, windows, settings.batch_size))["mixed"])
        scaffold.shared.freeze()
        for lr in later_grid:
            scores = _later_arms(
                replace(settings, later_lr=lr), seed, scaffold, mixed, domains, windows
            )
            for arm, value in scores.items():
                later[repr(lr)][arm].append(value)
        log(f"seed {seed} done ({time.perf_counter() - started:.0f} s)")
    return {"format": FORMAT, "settings": _settings_dict(settings), "seeds": list(seeds),
            "dense": dense, "phase1": phase1, "later": later,
            "seconds": time.perf_counter() - started}  # fmt: skip


def best_rates(sweep: Mapping[str, Any]) -> dict[str, float]:
    """The rate with the lowest mean loss over the sweep's seeds: for dense and per later arm."""

    def best(table: Mapping[str, Sequence[float]]) -> float:
        return float(min(table, key=lambda lr: sum(table[lr]) / len(table[lr])))

    out = {"dense": best(sweep["dense"])} if sweep["dense"] else {}
    for arm in LATER_ARMS if sweep["later"] else ():
        out[arm] = best({lr: arms[arm] for lr, arms in sweep["later"].items()})
    return out


def read_sweep(path: str | Path) -> dict[str, Any]:
    """Load a stored sweep, refusing files of another format."""
    return read_stored(path, FORMAT)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", required=True, help="where to write the sweep")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SWEEP_SEEDS))
    parser.add_argument("--lr", type=float, default=MixtureStudySettings().lr,
                        help="phase 1's peak rate (the later stages start from this phase 1)")  # fmt: skip
    parser.add_argument("--dense-grid", type=float, nargs="*", default=list(DENSE_GRID))
    parser.add_argument("--later-grid", type=float, nargs="*", default=list(LATER_GRID))
    args = parser.parse_args(argv)
    sweep = run_sweep(MixtureStudySettings(lr=args.lr), tuple(args.seeds), tuple(args.dense_grid),
                      tuple(args.later_grid), log=lambda line: print(line, flush=True))  # fmt: skip
    command = "OMP_NUM_THREADS=1 python -m modularforge.chapters.ch11_lr_sweep " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    write_study(sweep, args.json, command)
    print(best_rates(sweep))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

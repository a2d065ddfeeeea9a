"""What repaired chapter 11's recipe: a router that can learn, and rates tuned on their own seeds.

Three pieces of evidence, each read from stored files or computed in a second:

* `init_entropy`: a fresh router's entropy on the shipped trunk, reading the raw or the
  normalised residual stream (the saturation that froze the earlier routers);
* `sweep_rows`: the learning-rate sweeps (`ch11_lr_sweep`), one mean per rate;
* `repair_rows`: the five-seed study against the same study with one thing changed
  back, paired by seed (`measure.paired`).
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from modularforge.measure.paired import paired_difference

__all__ = ["init_entropy", "merged_sweep", "repair_rows", "sweep_rows"]


def init_entropy(run_dir: Path, batches: int = 4) -> dict[str, list[float]]:
    """Per router input, the per-layer mean entropy of a fresh soft router on a trained trunk.

    Built on the pipeline folder `run_dir` (its recorded trunk and experts) with the same
    seed for both inputs, so the two rows differ only in what the router reads.
    """
    from modularforge.mixture.routers import ROUTER_INPUTS, router_entropy, uniform_entropy
    from modularforge.mixture.routing import build_mixture
    from modularforge.pipeline.load import load_pipeline_experts
    from modularforge.training.data import eval_batches, load_mixed

    models = list(load_pipeline_experts(run_dir).values())
    shared = models[0].shared
    experts = [model.experts for model in models]
    data = load_mixed(shared.config.vocab_size)
    inputs = [x for x, _ in eval_batches(data.val, 8, 64, max_batches=batches)]
    out = {}
    for router_input in ROUTER_INPUTS:
        torch.manual_seed(0)
        moe = build_mixture(shared, experts, "soft", router_input=router_input)
        out[router_input] = router_entropy(moe, inputs)
    out["uniform (ln E)"] = [uniform_entropy(len(experts))] * shared.config.n_layers
    return out


def merged_sweep(*sweeps: Mapping[str, Any]) -> dict[str, Any]:
    """Several sweeps on the same seeds as one: their dense rates and later rates together."""
    seeds = {tuple(s["seeds"]) for s in sweeps}
    if len(seeds) != 1:
        raise ValueError(f"sweeps on different seeds cannot be merged: {sorted(seeds)}")
    dense: dict[str, list[float]] = {}
    later: dict[str, dict[str, list[float]]] = {}
    for sweep in sweeps:
        dense.update(sweep["dense"])
        later.update(sweep["later"])
    return {"seeds": list(seeds.pop()), "dense": dense, "later": later}


def sweep_rows(sweep: Mapping[str, Any]) -> list[list[str]]:
    """Rows (what is tuned, rate, mean mixed loss over the sweep's seeds), rates ascending."""
    rows = []
    for lr in sorted(sweep["dense"], key=float):
        rows.append(
            ["dense (whole model)", f"{float(lr):g}", f"{statistics.fmean(sweep['dense'][lr]):.3f}"]
        )
    for lr in sorted(sweep["later"], key=float):
        for arm, values in sweep["later"][lr].items():
            rows.append(
                [f"later stages: {arm}", f"{float(lr):g}", f"{statistics.fmean(values):.3f}"]
            )
    return rows


def repair_rows(
    main: Mapping[str, Any], changes: Sequence[tuple[str, Mapping[str, Any], str]]
) -> list[dict[str, Any]]:
    """Per (what was changed back, that study, arm): main's arm minus the changed study's, paired.

    Both studies must have run the same seeds, and should differ in that one setting
    (the dense arms are shared through `--reuse-dense`).
    """
    rows = []
    for label, other, arm in changes:
        if other["settings"]["seeds"] != main["settings"]["seeds"]:
            raise ValueError(f"{label}: the studies ran different seeds")
        pair = paired_difference(main["arms"][arm]["mixed"], other["arms"][arm]["mixed"])
        rows.append({"change": label, "arm": arm, "pair": pair})
    return rows

"""Reading the new-domain study: gain on the new domain, forgetting of the old ones, and what each arm costs.

Every number is recomputed from the stored per-seed losses (`ch11b_new_domain`):

* gain = the phase-1 model's loss on the new domain minus the arm's (nats; higher is better);
* forgetting = the mean over old domains of loss after minus loss before, in the arm's
  own system: the dense model for A and B, the label-routed old experts for C, the
  untouched old model for D (nats; 0 is nothing forgotten);
* each arm is read at its best rate of the shared grid (highest mean gain);
* comparisons are paired by seed (`measure.paired`), since every arm of a seed starts
  from that seed's phase-1 model.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from modularforge.measure.mixture_accounting import parameter_counts, phase_step_flops
from modularforge.measure.paired import PairedDifference, paired_difference
from modularforge.model.config import ModelConfig

__all__ = [
    "C_VS_B",
    "ArmRow",
    "arm_rows",
    "best_lr",
    "comparisons",
    "forgetting",
    "gains",
    "points",
]

#: The comparison the design's promise turns on: the new expert's gain against replay's.
C_VS_B = "C gains at least what replay (B) gains"
#: Arms whose old domains are served by the label-routed old experts.
EXPERT_ARMS = ("C_expert", "C_expert_2x", "C_from_python")


def _new(study: Mapping[str, Any]) -> str:
    return study["settings"]["new_domain"]


def gains(study: Mapping[str, Any], arm: str, lr: str) -> list[float]:
    """Per seed: the phase-1 model's new-domain loss minus the arm's."""
    new = _new(study)
    return [s["before"][new] - s["runs"][arm][lr][new] for s in study["per_seed"]]


def forgetting(study: Mapping[str, Any], arm: str, lr: str) -> list[float]:
    """Per seed: mean over old domains of the arm's loss minus its own system's loss before."""
    out = []
    for s in study["per_seed"]:
        baseline = s["old_system"] if arm in EXPERT_ARMS else s["before"]
        old = list(s["old_system"])
        out.append(statistics.fmean(s["runs"][arm][lr][d] - baseline[d] for d in old))
    return out


def best_lr(study: Mapping[str, Any], arm: str) -> str:
    """The grid rate (as stored, e.g. '0.01') with the highest mean gain for `arm`."""
    rates = study["per_seed"][0]["runs"][arm]
    return max(rates, key=lambda lr: statistics.fmean(gains(study, arm, lr)))


@dataclass(frozen=True)
class ArmRow:
    """One arm at its best rate: what it gains, forgets and costs."""

    arm: str
    label: str
    lr: float
    steps: int
    train_tflop: float
    gain: PairedDifference  # the gain against zero: its mean and 95 % interval
    forgetting_mean: float
    forgetting_max: float
    params_deployed: int
    seconds: float
    peak_mb: float


def _steps(study: Mapping[str, Any], arm: str) -> int:
    matched = study["per_seed"][0]["expert_steps_matched"]
    return {"C_expert": matched, "C_expert_2x": 2 * matched, "C_from_python": matched}.get(
        arm, study["settings"]["dense_steps"]
    )


def arm_rows(study: Mapping[str, Any]) -> list[ArmRow]:
    """Every arm at its best rate, in the study's order."""
    settings = study["settings"]
    config = ModelConfig.preset(settings["preset"])
    shape = (config, settings["batch_size"], settings["seq_len"])
    n_old = len(settings["old_domains"])
    one_model = parameter_counts(config, 1)["total"]
    memory = study["memory"]
    peak = {kind: next(v["peak_bytes"] for k, v in memory.items() if k.startswith(prefix)) / 1e6
            for kind, prefix in (("dense", "phase 1"), ("expert", "expert"))}  # fmt: skip
    rows = []
    for arm, label in study["arms"].items():
        lr = best_lr(study, arm)
        kind = "expert" if arm in EXPERT_ARMS else "dense"
        steps = _steps(study, arm)
        forgot = forgetting(study, arm, lr)
        params = {
            "A_finetune": one_model, "B_replay": one_model, "D_branch": 2 * one_model,
        }.get(arm, parameter_counts(config, n_old + 1)["total"])  # fmt: skip
        rows.append(ArmRow(
            arm=arm, label=label, lr=float(lr), steps=steps,
            train_tflop=steps * phase_step_flops(*shape, kind) / 1e12,
            gain=paired_difference(gains(study, arm, lr), [0.0] * len(study["per_seed"])),
            forgetting_mean=statistics.fmean(forgot), forgetting_max=max(forgot),
            params_deployed=params,
            seconds=statistics.fmean(s["runs"][arm][lr]["seconds"] for s in study["per_seed"]),
            peak_mb=peak[kind],
        ))  # fmt: skip
    return rows


def comparisons(study: Mapping[str, Any]) -> dict[str, PairedDifference]:
    """The paired questions the chapter asks, each arm at its best rate (gain differences)."""

    def g(arm: str) -> list[float]:
        return gains(study, arm, best_lr(study, arm))

    return {
        C_VS_B: paired_difference(g("C_expert"), g("B_replay")),
        "C against fine-tuning everything (A)": paired_difference(g("C_expert"), g("A_finetune")),
        "what freezing costs: C against the whole-model branch (D)": paired_difference(
            g("C_expert"), g("D_branch")
        ),
        "twice the FLOPs for C": paired_difference(g("C_expert_2x"), g("C_expert")),
        "C branched from the python expert": paired_difference(g("C_from_python"), g("C_expert")),
    }


def points(study: Mapping[str, Any]) -> dict[str, dict[str, list[float]]]:
    """Per arm at its best rate: per-seed gains and forgetting, for the frontier figure."""
    out = {}
    for arm in study["arms"]:
        lr = best_lr(study, arm)
        out[arm] = {"gain": gains(study, arm, lr), "forgetting": forgetting(study, arm, lr)}
    return out


def fraction_of_a(study: Mapping[str, Any], arm: str = "C_expert") -> float:
    """Mean gain of `arm` as a fraction of A's mean gain (each at its best rate)."""
    mine = statistics.fmean(gains(study, arm, best_lr(study, arm)))
    a = statistics.fmean(gains(study, "A_finetune", best_lr(study, "A_finetune")))
    return mine / a

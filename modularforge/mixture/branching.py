"""Branch an expert from the phase-1 FFNs instead of starting it from random weights.

Phase 1 trains the trunk together with temporary FFNs (`train.train_phase1`). Those
FFNs already fit the trunk: they are what the trunk learned to work with. Starting
every expert from a fresh FFN throws that away, and phase 2 begins worse than a
uniform guess. Branch-Train-Merge and Branch-Train-Mix instead *branch* each expert
from the trained seed model, and DEMix starts a new domain's expert from the closest
existing one. `branch_expert` makes that copy: new tensors, bit-identical values, so
training the branch never touches the phase-1 FFNs or the (frozen) trunk.

`train_expert_from` is phase 2 with the start chosen explicitly: "branched" (a copy
of the given FFNs) or "fresh" (the package's usual random initialisation), so the
two can be compared with everything else equal.
"""

from __future__ import annotations

import copy
import os
from typing import Literal

import torch
from torch import nn

from modularforge.model.shared import SharedComponents
from modularforge.model.trainer_model import ModuleTrainerModel
from modularforge.training.data import DomainData
from modularforge.training.train import TrainingHistory, TrainSettings, fit, resolve_device

__all__ = ["INITS", "branch_expert", "load_phase1_ffn", "train_expert_from"]

#: How a phase-2 expert can start.
INITS = ("branched", "fresh")
Init = Literal["branched", "fresh"]


def branch_expert(source: ModuleTrainerModel | nn.ModuleList) -> nn.ModuleList:
    """A trainable, independent copy of an expert's FFNs (e.g. the phase-1 scaffold's).

    Deep-copied, so the branch shares no storage with its source: training it leaves
    the source untouched. Gradients are switched on and left-over ones dropped.
    """
    experts = source.experts if isinstance(source, ModuleTrainerModel) else source
    if not isinstance(experts, nn.ModuleList):
        raise TypeError(
            f"branch_expert needs a ModuleTrainerModel or an nn.ModuleList of FFNs, "
            f"got {type(source).__name__}"
        )
    branch = copy.deepcopy(experts)
    for parameter in branch.parameters():
        parameter.requires_grad_(True)
        parameter.grad = None
    return branch.train()


def load_phase1_ffn(path: str | os.PathLike[str], shared: SharedComponents) -> nn.ModuleList:
    """The phase-1 FFNs a pipeline saved (`phase1-ffn.safetensors`), checked against `shared`."""
    from modularforge.files.checkpoint import load_expert

    return load_expert(path, shared).experts


def train_expert_from(
    shared: SharedComponents,
    data: DomainData,
    settings: TrainSettings,
    init: Init,
    phase1_ffn: nn.ModuleList | None = None,
    expert_idx: int = 0,
) -> tuple[ModuleTrainerModel, TrainingHistory]:
    """Phase 2 on a frozen trunk, the expert starting "branched" (from `phase1_ffn`) or "fresh".

    The fresh start draws the same seed as `train.train_expert`, so a fresh expert
    here is the package's usual phase-2 expert.
    """
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if init == "branched" and phase1_ffn is None:
        raise ValueError("init='branched' needs phase1_ffn (the phase-1 scaffold's experts)")
    if init == "fresh" and phase1_ffn is not None:
        raise ValueError("init='fresh' takes no phase1_ffn; pass init='branched' to copy it")
    device = resolve_device(settings.device)
    shared.freeze()
    torch.manual_seed(settings.seed + 1000 * (expert_idx + 1))  # as train.train_expert
    experts = branch_expert(phase1_ffn) if init == "branched" else None
    model = ModuleTrainerModel(shared, shared.config, expert_idx=expert_idx, experts=experts)
    model = model.to(device)
    history = fit(model, data, settings, description=f"expert {expert_idx} ({init}, {data.name})")
    return model, history

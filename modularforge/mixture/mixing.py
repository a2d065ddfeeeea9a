"""The mixing stage (BTX): a short fine-tune of the assembled mixture on mixed data.

After the experts are trained apart, Branch-Train-MiX fine-tunes the whole mixture
briefly on all the data, so that the router learns to choose and the shared weights
adapt to a residual stream now written by several experts. Which weights move is a
choice, `TRAINABLE`:

* "router": the routers alone (the package's `moe.train_router` behaviour);
* "router+attention+norms": the routers plus every attention block (with its
  LayerNorm) and the final LayerNorm; the token embedding (= tied LM head) stays;
* "all": every weight of the trunk as well.

Experts are frozen or not (`freeze_experts`); BTX found freezing them changed little.
Anything beyond "router" gives up the frozen-trunk saving of phase 2: the trunk's
weights get gradients and AdamW state again, and activations are kept for its weight
gradients. `measure_mixing_step` measures that cost with `memory.measure_training_step`,
the same probe phase 2 uses (`pipeline.memory_check.measure_expert_step`).
"""

from __future__ import annotations

import os
from typing import Literal

import torch
from torch import nn

from modularforge.measure.memory import measure_training_step
from modularforge.mixture.moe import MixtureOfExperts
from modularforge.training.data import DomainData, random_batch
from modularforge.training.train import TrainingHistory, TrainSettings, fit, make_optimizer

__all__ = [
    "TRAINABLE",
    "configure_mixing",
    "measure_mixing_step",
    "train_mixing",
    "trainable_groups",
]

#: The sets of weights a mixing stage can train (besides the experts, see `freeze_experts`).
TRAINABLE = ("router", "router+attention+norms", "all")
Trainable = Literal["router", "router+attention+norms", "all"]


def trainable_groups(moe: MixtureOfExperts) -> dict[str, list[nn.Parameter]]:
    """The mixture's parameters by role: router, attention (+ its norms), final norm, embedding, experts."""
    shared = moe.shared
    return {
        "router": list(moe.routers.parameters()),
        "attention": list(shared.attention.parameters()),
        "output_norm": list(shared.output_norm.parameters()),
        "embedding": list(shared.token_embedding.parameters()),
        "experts": list(moe.experts.parameters()),
    }


def configure_mixing(
    moe: MixtureOfExperts, trainable: Trainable, freeze_experts: bool = True
) -> MixtureOfExperts:
    """Switch gradients on for the chosen groups and off for the rest; returns `moe`.

    The trunk is unfrozen (train mode) only when some of it trains; experts that are
    frozen also stay in eval mode (`MixtureOfExperts.freeze_experts`).
    """
    if trainable not in TRAINABLE:
        raise ValueError(f"trainable must be one of {TRAINABLE}, got {trainable!r}")
    groups = trainable_groups(moe)
    chosen = {"router"}
    if trainable in ("router+attention+norms", "all"):
        chosen |= {"attention", "output_norm"}
    if trainable == "all":
        chosen.add("embedding")
    if chosen == {"router"}:
        moe.shared.freeze()
    else:
        moe.shared.unfreeze()
    for name, parameters in groups.items():
        if name == "experts":
            continue
        for parameter in parameters:
            parameter.requires_grad_(name in chosen)
            if name not in chosen:
                parameter.grad = None
    if freeze_experts:
        moe.freeze_experts()
    else:
        for parameter in groups["experts"]:
            parameter.requires_grad_(True)
        moe._experts_frozen = False  # the one flag freeze_experts sets, undone
    return moe


def train_mixing(
    moe: MixtureOfExperts,
    data: DomainData,
    settings: TrainSettings,
    trainable: Trainable = "router+attention+norms",
    freeze_experts: bool = True,
    checkpoint_path: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 0,
) -> TrainingHistory:
    """The mixing stage: `fit` on mixed data with the chosen groups trainable (balancing loss included).

    With `checkpoint_path`, the stage resumes from (and saves) a training state, as
    every other stage of the pipeline does.
    """
    configure_mixing(moe, trainable, freeze_experts)
    return fit(
        moe,
        data,
        settings,
        description=f"mixing stage ({trainable})",
        checkpoint_path=checkpoint_path,
        checkpoint_every=checkpoint_every,
    )


def measure_mixing_step(
    moe: MixtureOfExperts,
    data: DomainData,
    settings: TrainSettings,
    trainable: Trainable,
    freeze_experts: bool = True,
) -> dict[str, int]:
    """Peak memory of one mixing-stage step (after a warm-up step), with the stage's batch.

    Runs on `moe` itself and restores its weights afterwards, so the measurement
    leaves the mixture as it found it.
    """
    saved = {name: t.detach().clone() for name, t in moe.state_dict().items()}
    configure_mixing(moe, trainable, freeze_experts)
    optimizer = make_optimizer(moe.parameters(), settings)
    generator = torch.Generator().manual_seed(settings.seed)
    batch = random_batch(data.train, settings.batch_size, settings.seq_len, generator)
    measure_training_step(moe, batch, optimizer)  # warm-up: BLAS workspace, AdamW state
    step = measure_training_step(moe, batch, optimizer)
    del optimizer
    with torch.no_grad():
        moe.load_state_dict(saved)
    for parameter in moe.parameters():
        parameter.grad = None
    return {
        "peak_bytes": int(step.peak),
        "static_bytes": int(step.static),
        "activation_bytes": int(step.activations),
        "trainable_params": sum(p.numel() for p in moe.parameters() if p.requires_grad),
    }

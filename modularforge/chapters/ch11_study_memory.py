"""Peak memory of each kind of training step in chapter 11's study: phase 1, an expert, mixing.

Kept apart from the study's training loop (`ch11_mixture_study`) because it measures
steps on random weights: memory does not depend on their values, so it needs no trained
model and runs once per study, not once per seed.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from modularforge.measure.memory import measure_training_step
from modularforge.mixture.mixing import measure_mixing_step
from modularforge.mixture.routing import build_mixture
from modularforge.model.config import ModelConfig
from modularforge.model.expert import build_expert
from modularforge.model.shared import SharedComponents
from modularforge.model.trainer_model import seeded_trainer_model
from modularforge.pipeline.memory_check import measure_expert_step
from modularforge.training.data import DomainData, load_mixed, random_batch
from modularforge.training.train import TrainSettings, make_optimizer

__all__ = ["mixing_memory"]


def _whole_step_memory(model: nn.Module, data: DomainData, settings: TrainSettings) -> dict:
    """Peak of one step that trains every weight (phase 1, dense), probed as the others are."""
    optimizer = make_optimizer(model.parameters(), settings)
    generator = torch.Generator().manual_seed(settings.seed)
    batch = random_batch(data.train, settings.batch_size, settings.seq_len, generator)
    measure_training_step(model, batch, optimizer)  # warm-up: BLAS workspace, AdamW state
    step = measure_training_step(model, batch, optimizer)
    return {"peak_bytes": int(step.peak), "static_bytes": int(step.static),
            "activation_bytes": int(step.activations),
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad)}  # fmt: skip


def mixing_memory(
    preset: str, batch_size: int, seq_len: int, n_experts: int = 4, seed: int = 0
) -> dict[str, Any]:
    """Peak memory of one expert step (phase 2) and of one mixing step per choice of weights.

    Random weights (memory does not depend on their values); the mixture holds
    `n_experts` experts with soft routing, as the study's mixing arms do.
    """
    config = ModelConfig.preset(preset)
    torch.manual_seed(seed)
    mixed = load_mixed(config.vocab_size)
    settings = TrainSettings(batch_size=batch_size, seq_len=seq_len, device="cpu", progress=False)
    whole = seeded_trainer_model(config, frozen=False, seed=seed)
    rows = {"phase 1 step (trunk + FFN trained whole)": _whole_step_memory(whole, mixed, settings)}
    shared = SharedComponents(config).freeze()
    rows["expert step (phase 2, frozen trunk)"] = measure_expert_step(shared, mixed, settings, 0)
    experts = [build_expert(config) for _ in range(n_experts)]
    moe = build_mixture(shared, experts, "soft", aux_loss_weight=0.01)
    for trainable, frozen in (("router", True), ("router+attention+norms", True), ("all", False)):
        label = f"mixing: {trainable}, experts {'frozen' if frozen else 'trained'}"
        rows[label] = measure_mixing_step(moe, mixed, settings, trainable, frozen)
    return {"preset": preset, "batch_size": batch_size, "seq_len": seq_len,
            "n_experts": n_experts, "method": "memory.measure_training_step (after one warm-up "
            "step): heap high-water mark on CPU, torch.cuda.max_memory_allocated on CUDA",
            "rows": rows}  # fmt: skip

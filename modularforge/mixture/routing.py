"""Routing choices for the mixture: top-1, top-2 or soft, with an optional generalist expert.

`moe.MixtureOfExperts` supports top-1 (Switch) and top-2 (Mixtral) routers. BTX's
ablation found *soft* routing (every expert weighted by its router probability)
best at their scale, so `SoftRouter` adds it: the same linear router, all experts
kept, weights = the softmax probabilities. It returns the experts sorted by
probability, so `indices[..., 0]` is still the top-1 choice that the Switch
balancing loss counts.

BTX also keeps the seed model's own FFN as an extra "generalist" expert; here that
is the phase-1 FFN (`generalist=` in `build_mixture`).

Where the balancing loss is computed. `MixtureOfExperts` computes it per layer over
every token of the batch passed to one forward call, then averages over layers.
`train.fit` runs one forward per optimizer step on the whole step batch (there is no
gradient accumulation), so in this package it is over the global batch. Computed per
micro-batch or per sequence instead, it punishes a sequence for sending all its tokens
to its domain's expert even when the batch as a whole is balanced, which suppresses
exactly the domain specialization the experts were trained for ("Demons in the
Detail", 2025). `balancing_loss` computes both forms so the difference can be shown.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from modularforge.mixture.moe import MixtureOfExperts
from modularforge.mixture.routers import RouterInput, RouterScores
from modularforge.model.shared import SharedComponents

__all__ = ["ROUTINGS", "SoftRouter", "balancing_loss", "build_mixture"]

#: The routing choices `build_mixture` offers.
ROUTINGS = ("top1", "top2", "soft")
Routing = Literal["top1", "top2", "soft"]


class SoftRouter(RouterScores):
    """Every expert on every token, weighted by its router probability (sorted, most probable first)."""

    def __init__(
        self, d_model: int, n_experts: int, router_input: RouterInput = "layernorm"
    ) -> None:
        super().__init__(d_model, n_experts, router_input)
        self.top_k = n_experts

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Residual stream (B, T, C) -> weights (B, T, E), indices (B, T, E), probs (B, T, E)."""
        probs = self.probabilities(x)  # (B, T, E)
        order = torch.sort(probs.detach(), dim=-1, descending=True, stable=True).indices
        return probs.gather(-1, order), order, probs  # weights sum to 1 over all experts


def build_mixture(
    shared: SharedComponents,
    experts: Sequence[nn.ModuleList],
    routing: Routing = "top1",
    generalist: nn.ModuleList | None = None,
    aux_loss_weight: float = 0.0,
    router_input: RouterInput = "layernorm",
) -> MixtureOfExperts:
    """A mixture of `experts` (plus `generalist` as the last expert) with the chosen routing.

    `router_input` says what the routers read (`routers.ROUTER_INPUTS`): the normalised
    residual stream by default, or the raw one, which saturates the softmax at init.
    """
    if routing not in ROUTINGS:
        raise ValueError(f"routing must be one of {ROUTINGS}, got {routing!r}")
    experts = list(experts) + ([generalist] if generalist is not None else [])
    top_k = 2 if routing == "top2" else 1
    moe = MixtureOfExperts(
        shared, experts, top_k=top_k, aux_loss_weight=aux_loss_weight, router_input=router_input
    )
    if routing == "soft":
        moe.routers = nn.ModuleList(
            SoftRouter(shared.config.d_model, moe.n_experts, router_input)
            for _ in range(shared.config.n_layers)
        )
        moe.top_k = moe.n_experts
    return moe.to(next(shared.parameters()).device)


def balancing_loss(
    probs: torch.Tensor, top1: torch.Tensor, over: Literal["batch", "sequence"] = "batch"
) -> torch.Tensor:
    """Switch loss n_experts * sum_i f_i P_i of one layer, over the whole batch or per sequence.

    probs (B, T, E) router probabilities, top1 (B, T) chosen experts. "batch" counts
    f and P over all B*T tokens (what `MixtureOfExperts` does for its forward batch);
    "sequence" computes the loss within each sequence and averages the B results.
    """
    if probs.dim() != 3 or top1.shape != probs.shape[:2]:
        raise ValueError(
            f"probs must be (B, T, E) and top1 (B, T); got {tuple(probs.shape)} and "
            f"{tuple(top1.shape)}"
        )
    n_experts = probs.shape[-1]
    one_hot = nn.functional.one_hot(top1, n_experts).to(probs.dtype)  # (B, T, E)
    if over == "batch":
        return n_experts * (one_hot.mean(dim=(0, 1)) * probs.mean(dim=(0, 1))).sum()
    if over == "sequence":
        per_sequence = (one_hot.mean(dim=1) * probs.mean(dim=1)).sum(dim=-1)  # (B,)
        return n_experts * per_sequence.mean()
    raise ValueError(f"over must be 'batch' or 'sequence', got {over!r}")

"""The expert: one feed-forward block per layer, the only part trained in phase 2.

Each block is the design's FFN: LayerNorm -> Linear(d_model, d_ff) -> GELU ->
Dropout -> Linear(d_ff, d_model) -> Dropout, added back to the residual stream.
"""

from __future__ import annotations

import torch
from torch import nn

from modularforge.model.config import ModelConfig
from modularforge.model.init import normal_init_


class ExpertFFN(nn.Module):
    """One layer's expert: x + dropout(fc2(dropout(gelu(fc1(LayerNorm(x))))))."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.fc1 = nn.Linear(config.d_model, config.d_ff)
        self.act = nn.GELU()
        self.dropout1 = nn.Dropout(config.expert_dropout)
        self.fc2 = nn.Linear(config.d_ff, config.d_model)
        self.dropout2 = nn.Dropout(config.expert_dropout)
        for linear in (self.fc1, self.fc2):
            normal_init_(linear.weight, std=0.02)
            nn.init.zeros_(linear.bias)

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """The FFN branch alone, without the residual: what a mixture weights per expert."""
        h = self.fc1(self.norm(x))  # (B, T, d_ff)
        h = self.dropout1(self.act(h))  # (B, T, d_ff)
        return self.dropout2(self.fc2(h))  # (B, T, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.transform(x)  # (B, T, C)


def build_expert(config: ModelConfig) -> nn.ModuleList:
    """A whole expert: an `nn.ModuleList` with one `ExpertFFN` per layer."""
    return nn.ModuleList(ExpertFFN(config) for _ in range(config.n_layers))


def expert_ffn_parameter_count(config: ModelConfig) -> int:
    """Parameters of one layer's FFN, from the architecture (LN + fc1 + fc2, with biases)."""
    d, f = config.d_model, config.d_ff
    return 2 * d + (d * f + f) + (f * d + d)

"""The baseline a reader would otherwise write: a plain dense GPT from stock PyTorch modules.

The benchmark compares expert training against two things: the same model with
nothing frozen, and this one, the model "written the obvious way". It has the
shape of the trainer model (shared trunk + one expert) and exactly its parameter
count, but it is built from `nn.TransformerEncoderLayer` with a causal mask, and
every weight trains. If the modular design were slower per step than what a
reader would write anyway, this is where it would show.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from modularforge.model.config import ModelConfig
from modularforge.model.init import normal_init_
from modularforge.model.inputs import check_input_ids
from modularforge.model.shared import sinusoidal_positions


class PlainGPT(nn.Module):
    """Embedding + sinusoidal positions, n_layers stock encoder layers (causal), LayerNorm, tied head.

    Each `nn.TransformerEncoderLayer` holds one attention block and one FFN, so its
    parameters are exactly one shared attention block plus one expert layer of
    `ModuleTrainerModel`: LN + QKV (`in_proj`) + output projection, then LN +
    Linear(d_model, d_ff) + Linear(d_ff, d_model), all with biases.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.d_model)
        normal_init_(self.token_embedding.weight, std=0.02)  # GPT-2's init for a tied head
        self.register_buffer(
            "positions", sinusoidal_positions(config.max_seq_len, config.d_model), persistent=False
        )
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                config.d_model,
                config.n_heads,
                config.d_ff,
                config.dropout,
                activation="gelu",
                layer_norm_eps=config.layer_norm_eps,
                batch_first=True,
                norm_first=True,
            )
            for _ in range(config.n_layers)
        )
        self.output_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token ids (B, T) -> next-token logits (B, T, vocab_size)."""
        input_ids = check_input_ids(input_ids, self.config)
        seq_len = input_ids.shape[1]
        x = self.token_embedding(input_ids) * math.sqrt(self.config.d_model)  # (B, T, C)
        x = self.dropout(x + self.positions[:seq_len])  # (B, T, C)
        mask = nn.Transformer.generate_square_subsequent_mask(seq_len, device=x.device)  # (T, T)
        for layer in self.layers:
            x = layer(x, src_mask=mask, is_causal=True)  # (B, T, C)
        return self.output_norm(x) @ self.token_embedding.weight.T  # (B, T, vocab), tied head


def build_baseline(config: ModelConfig, seed: int = 0) -> PlainGPT:
    """A `PlainGPT` initialised from `seed`, so every run of the benchmark starts the same."""
    torch.manual_seed(seed)
    return PlainGPT(config)

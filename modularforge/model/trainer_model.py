"""The phase-2 training harness: a frozen shared trunk plus ONE trainable expert.

The forward pass interleaves the two, layer by layer, exactly as the design
describes: layer i's attention reads the output of layer i-1's expert, so the
attention of every layer cannot be run first and the experts afterwards.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import torch
from torch import nn

from modularforge.model.config import ModelConfig
from modularforge.model.expert import build_expert
from modularforge.model.inputs import check_attention_mask, check_input_ids
from modularforge.model.shared import SharedComponents

logger = logging.getLogger(__name__)


class ModuleTrainerModel(nn.Module):
    """Frozen `SharedComponents` + one expert (an `nn.ModuleList` of FFNs, one per layer)."""

    def __init__(
        self,
        shared: SharedComponents,
        config: ModelConfig,
        expert_idx: int = 0,
        *,
        warn_if_unfrozen: bool = True,
        experts: nn.ModuleList | None = None,
    ) -> None:
        """`experts` defaults to a fresh expert; pass one to wrap existing FFN blocks."""
        super().__init__()
        if shared.config != config:
            raise ValueError(
                f"the shared components were built for {shared.config}, "
                f"but the trainer model was given {config}; pass shared.config"
            )
        if isinstance(expert_idx, bool) or not isinstance(expert_idx, int) or expert_idx < 0:
            raise ValueError(f"expert_idx must be an int >= 0, got {expert_idx!r}")
        if warn_if_unfrozen and not shared.is_frozen:
            # A warning, not an error: while debugging (or in phase 1) an unfrozen
            # trunk is useful. In phase 2 it means the shared weights will drift
            # and every expert will need its own copy of them.
            logger.warning(
                "shared components are not frozen: their %d parameters will receive "
                "gradients and optimizer state. Call shared.freeze() before wrapping "
                "them for expert training.",
                sum(p.numel() for p in shared.parameters()),
            )
        self.config = config
        self.expert_idx = expert_idx
        self.shared = shared
        if experts is not None and len(experts) != config.n_layers:
            raise ValueError(
                f"experts must hold one FFN block per layer ({config.n_layers}), got {len(experts)}"
            )
        self.experts = build_expert(config) if experts is None else experts

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Token ids (B, T) -> next-token logits (B, T, vocab_size)."""
        input_ids = check_input_ids(input_ids, self.config)
        attention_mask = check_attention_mask(attention_mask, input_ids)
        x = self.shared.embed(input_ids)  # [FROZEN] (B, T, C)
        for layer_idx in range(self.config.n_layers):
            x = self.shared.apply_attention(x, layer_idx, attention_mask)  # [FROZEN]
            x = self.experts[layer_idx](x)  # [TRAINABLE]
        return self.shared.predict(x)  # [FROZEN] (B, T, vocab)

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """The expert's parameters, and only those: what the optimizer should see."""
        yield from self.experts.parameters()


def seeded_trainer_model(
    config: ModelConfig, frozen: bool = True, seed: int = 0
) -> ModuleTrainerModel:
    """A freshly initialised trunk + expert from `seed`, the trunk frozen or not.

    Every side-by-side measurement (frozen against full, one lean setting against
    another) starts here, so the models compared begin from the same weights.
    """
    torch.manual_seed(seed)
    shared = SharedComponents(config)
    if frozen:
        shared.freeze()
    return ModuleTrainerModel(shared, config, warn_if_unfrozen=False)

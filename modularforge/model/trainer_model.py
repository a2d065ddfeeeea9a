"""The phase-2 training harness: a frozen shared trunk plus ONE trainable expert.

The forward pass interleaves the two, layer by layer, exactly as the design
describes: layer i's attention reads the output of layer i-1's expert, so the
attention of every layer cannot be run first and the experts afterwards.

`save_expert` and `load_expert` are the design document's own spelling
(`model.save_expert(path)`, `ModuleTrainerModel.load_expert(path, shared)`). The
file format and every check on it live one layer up, in
`modularforge.files.checkpoint`, which imports this class; so the two methods
import it inside their bodies, when called, never when this module is imported.
That is the package's one import that points up a layer, and
tests/package/test_package_layout.py allows exactly these two.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

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

    def save_expert(self, path: str | os.PathLike[str]) -> Path:
        """Write this expert alone (no shared weights) to `path`; return the path.

        The design document's API for `modularforge.files.checkpoint.save_expert(self,
        path)`, which this only calls: one implementation of the file format, so a file
        written either way is the same bytes. Only the expert is stored because the
        trunk is saved once, in phase 1; the file records the fingerprint of the trunk
        it was trained against, so it is never loaded next to another one by mistake.
        """
        # Imported here, not at the top: files.checkpoint imports this module.
        from modularforge.files.checkpoint import save_expert

        return save_expert(self, path)

    @classmethod
    def load_expert(
        cls,
        path: str | os.PathLike[str],
        shared: SharedComponents,
        *,
        allow_shared_mismatch: bool = False,
    ) -> ModuleTrainerModel:
        """Rebuild a trainer model from an expert file, on top of the trunk `shared`.

        The design document's API for `modularforge.files.checkpoint.load_expert`, which
        this only calls, so the checks and their errors are the function's: the config
        fields the expert depends on must equal `shared.config`'s, and the fingerprint
        of `shared` must be the one recorded in the file (`SharedMismatchError`
        otherwise: an expert's FFNs are meaningless on another trunk's attention).
        Called on a subclass it refuses, since the file always rebuilds this class.
        """
        if cls is not ModuleTrainerModel:
            raise TypeError(
                f"{cls.__name__}.load_expert: an expert file rebuilds a ModuleTrainerModel "
                "(one FFN per layer); call ModuleTrainerModel.load_expert"
            )
        # Imported here, not at the top: files.checkpoint imports this module.
        from modularforge.files.checkpoint import load_expert

        return load_expert(path, shared, allow_shared_mismatch=allow_shared_mismatch)


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

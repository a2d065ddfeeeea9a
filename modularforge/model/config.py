"""Model configuration: one dataclass, two presets, and validation on construction.

Every size the book quotes is derived from a `ModelConfig`; nothing else in the
package hard-codes a dimension. Validation happens here, once, so that a bad value
fails with a message that names the field instead of a shape error deep inside a
matmul.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

#: Fields whose values must be whole numbers greater than zero.
_POSITIVE_INT_FIELDS = ("d_model", "n_heads", "n_layers", "d_ff", "vocab_size", "max_seq_len")
#: Fields that are probabilities of dropping an activation.
_DROPOUT_FIELDS = ("dropout", "expert_dropout")


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the shared trunk and of every expert.

    The model is a pre-LN decoder: token embedding (scaled by sqrt(d_model)) plus
    fixed sinusoidal positions, then per layer a shared causal self-attention block
    and an expert feed-forward block, then a final LayerNorm and an LM head tied to
    the token embedding.
    """

    d_model: int = 512  # width of the residual stream
    n_heads: int = 8  # attention heads; head size is d_model // n_heads
    n_layers: int = 4  # layers: one shared attention + one expert FFN each
    d_ff: int = 2048  # hidden width of each expert FFN
    vocab_size: int = 16384  # tokenizer vocabulary; the tied LM head has this many outputs
    max_seq_len: int = 512  # longest sequence; sinusoidal positions are precomputed up to here
    dropout: float = 0.1  # dropout inside the shared trunk (embedding, attention)
    expert_dropout: float = 0.1  # dropout inside each expert FFN (after GELU, after fc2)
    layer_norm_eps: float = 1e-5  # epsilon of every LayerNorm

    def __post_init__(self) -> None:
        for name in _POSITIVE_INT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(
                    f"ModelConfig.{name} must be a positive int, got {value!r} "
                    f"({type(value).__name__})"
                )
            if value <= 0:
                raise ValueError(f"ModelConfig.{name} must be a positive int (>= 1), got {value}")
        for name in _DROPOUT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(
                    f"ModelConfig.{name} must be a float in [0, 1), got {value!r} "
                    f"({type(value).__name__})"
                )
            if not 0.0 <= float(value) < 1.0:
                raise ValueError(f"ModelConfig.{name} must be in [0, 1), got {value}")
        eps = self.layer_norm_eps
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
            raise ValueError(f"ModelConfig.layer_norm_eps must be a float > 0, got {eps!r}")
        if self.d_model % self.n_heads != 0:
            raise ValueError(
                f"ModelConfig.d_model ({self.d_model}) must be divisible by "
                f"n_heads ({self.n_heads}); pick n_heads from the divisors of d_model"
            )
        if self.d_model % 2 != 0:
            raise ValueError(
                f"ModelConfig.d_model must be even for sinusoidal positions, got {self.d_model}"
            )

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.d_model // self.n_heads

    @classmethod
    def seed(cls) -> ModelConfig:
        """The design document's reference model (about 21M parameters)."""
        return cls(
            d_model=512,
            n_heads=8,
            n_layers=4,
            d_ff=2048,
            vocab_size=16384,
            max_seq_len=512,
            dropout=0.1,
            expert_dropout=0.1,
        )

    @classmethod
    def tiny(cls) -> ModelConfig:
        """A small model that trains to a visibly falling loss in seconds on 2 CPU cores."""
        return cls(
            d_model=128,
            n_heads=4,
            n_layers=2,
            d_ff=512,
            vocab_size=2048,
            max_seq_len=128,
            dropout=0.0,
            expert_dropout=0.0,
        )

    @classmethod
    def preset(cls, name: str) -> ModelConfig:
        """Look a preset up by name ("seed" or "tiny")."""
        presets = {"seed": cls.seed, "tiny": cls.tiny}
        if name not in presets:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(presets)}")
        return presets[name]()

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with some fields changed (validated like any new config)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every field, for JSON metadata."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        """Rebuild a config from `to_dict()` output; unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig fields {unknown}; known fields: {sorted(known)}")
        return cls(**values)

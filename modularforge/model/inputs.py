"""Checks on what callers feed the model, done once at the front door.

A token id out of range would otherwise become a CUDA device-side assert (or, on
CPU, an IndexError from deep inside `nn.Embedding`); a sequence longer than the
precomputed positions would become a broadcasting error. Both are caught here
with a message that says what was given and what was expected.
"""

from __future__ import annotations

import torch

from modularforge.model.config import ModelConfig

_INTEGER_DTYPES = (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8)


def check_input_ids(input_ids: object, config: ModelConfig) -> torch.Tensor:
    """Validate a (batch, seq_len) tensor of token ids and return it as int64."""
    if not isinstance(input_ids, torch.Tensor):
        raise ValueError(
            f"input_ids must be a torch.Tensor of shape (batch, seq_len), "
            f"got {type(input_ids).__name__}"
        )
    if input_ids.dtype not in _INTEGER_DTYPES:
        raise ValueError(
            f"input_ids must have an integer dtype (torch.long expected), got {input_ids.dtype}"
        )
    if input_ids.dim() != 2:
        raise ValueError(
            f"input_ids must have rank 2 (batch, seq_len), got rank {input_ids.dim()} "
            f"with shape {tuple(input_ids.shape)}; add a batch dimension with .unsqueeze(0)"
        )
    batch, seq_len = input_ids.shape
    if batch == 0 or seq_len == 0:
        raise ValueError(f"input_ids must be non-empty, got shape {tuple(input_ids.shape)}")
    if seq_len > config.max_seq_len:
        raise ValueError(
            f"sequence length {seq_len} exceeds max_seq_len {config.max_seq_len}; "
            f"split the input into chunks of at most {config.max_seq_len} tokens"
        )
    low, high = int(input_ids.min()), int(input_ids.max())
    if low < 0 or high >= config.vocab_size:
        raise ValueError(
            f"token ids must lie in [0, {config.vocab_size}) (vocab_size), "
            f"got values from {low} to {high}; was the text encoded with a tokenizer "
            f"of a different vocabulary size?"
        )
    return input_ids.long()


def check_attention_mask(attention_mask: object, input_ids: torch.Tensor) -> torch.Tensor | None:
    """Validate an optional (batch, seq_len) padding mask (1 = real token, 0 = padding)."""
    if attention_mask is None:
        return None
    if not isinstance(attention_mask, torch.Tensor):
        raise ValueError(
            f"attention_mask must be a torch.Tensor or None, got {type(attention_mask).__name__}"
        )
    if tuple(attention_mask.shape) != tuple(input_ids.shape):
        raise ValueError(
            f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, "
            f"got {tuple(attention_mask.shape)}"
        )
    if attention_mask.dtype != torch.bool:
        if attention_mask.dtype.is_floating_point or attention_mask.dtype.is_complex:
            raise ValueError(
                f"attention_mask must hold 0/1 integers or booleans, got dtype {attention_mask.dtype}"
            )
        if bool(((attention_mask != 0) & (attention_mask != 1)).any()):
            raise ValueError("attention_mask values must be 0 (padding) or 1 (token)")
        attention_mask = attention_mask.bool()
    return attention_mask

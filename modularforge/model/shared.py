"""The shared trunk: everything that every expert reuses, trained once and then frozen.

Holds the token embedding, the fixed sinusoidal positions, one causal
self-attention block per layer, and the output LayerNorm. The LM head has no
weights of its own: it reuses the token embedding matrix (weight tying), so the
trunk stores that 16384 x 512 matrix once.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from modularforge.model.config import ModelConfig
from modularforge.model.init import normal_init_

#: How `scaled_dot_product_attention` may run. "auto" lets PyTorch choose (the
#: default: on CPU the fused flash kernel, except with attention dropout in
#: training, which falls back to the math path); "fused" allows only the fused
#: kernels (flash, memory-efficient, cuDNN) and "math" only the reference path
#: that materialises the (B, heads, T, T) scores. Measurements set it explicitly,
#: so that two arms compared differ in the path only when the path is the point.
ATTENTION_PATHS = ("auto", "fused", "math")
_FUSED_BACKENDS = [
    SDPBackend.FLASH_ATTENTION,
    SDPBackend.EFFICIENT_ATTENTION,
    SDPBackend.CUDNN_ATTENTION,
]


def check_attention_path(path: str) -> str:
    """Return `path` if it is one of `ATTENTION_PATHS`, else raise naming the choices."""
    if path not in ATTENTION_PATHS:
        raise ValueError(f"attention path must be one of {ATTENTION_PATHS}, got {path!r}")
    return path


def attention_backends(path: str) -> contextlib.AbstractContextManager:
    """The context that restricts SDPA to the kernels of `path` (a no-op for "auto")."""
    check_attention_path(path)
    if path == "math":
        return sdpa_kernel(SDPBackend.MATH)
    if path == "fused":
        return sdpa_kernel(_FUSED_BACKENDS)
    return contextlib.nullcontext()


def sinusoidal_positions(max_seq_len: int, d_model: int) -> torch.Tensor:
    """The fixed (max_seq_len, d_model) position table of "Attention Is All You Need"."""
    position = torch.arange(max_seq_len, dtype=torch.float32).unsqueeze(1)  # (T, 1)
    frequency = torch.exp(
        torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model)
    )  # (C/2,)
    table = torch.zeros(max_seq_len, d_model)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency)
    return table  # (T, C)


class CausalSelfAttention(nn.Module):
    """One pre-LN attention block: x + dropout(proj(attention(LayerNorm(x))))."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.dropout_p = config.dropout
        self.norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)  # q, k, v in one matmul
        self.proj = nn.Linear(config.d_model, config.d_model)
        self.dropout = nn.Dropout(config.dropout)
        self.dropout_enabled = True  # SharedComponents.set_trunk_dropout switches it
        self.attention_path = "auto"  # SharedComponents.set_attention_path sets it

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        batch, seq_len, d_model = x.shape  # (B, T, C)
        q, k, v = self.qkv(self.norm(x)).split(d_model, dim=2)  # each (B, T, C)
        head_dim = d_model // self.n_heads
        q = q.view(batch, seq_len, self.n_heads, head_dim).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(batch, seq_len, self.n_heads, head_dim).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(batch, seq_len, self.n_heads, head_dim).transpose(1, 2)  # (B, nh, T, hs)
        active = self.training and self.dropout_enabled
        dropout_p = self.dropout_p if active else 0.0
        if self.attention_path == "fused" and dropout_p > 0 and x.device.type == "cpu":
            raise ValueError(
                "attention path 'fused' with attention dropout cannot run on CPU: the CPU "
                "flash kernel has no dropout. Switch trunk dropout off "
                "(set_trunk_dropout(False)) or use the 'math' or 'auto' path"
            )
        with attention_backends(self.attention_path):
            if key_mask is None:
                y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
            else:
                y = F.scaled_dot_product_attention(
                    q, k, v, attn_mask=causal_padding_mask(key_mask), dropout_p=dropout_p
                )
        y = y.transpose(1, 2).contiguous().view(batch, seq_len, d_model)  # (B, T, C)
        return x + F.dropout(self.proj(y), self.dropout.p, training=active)


def causal_padding_mask(key_mask: torch.Tensor) -> torch.Tensor:
    """Combine a (B, T) padding mask with the causal mask into a (B, 1, T, T) bool mask.

    A query always sees itself, so a row of padding never becomes all -inf (which
    would turn the softmax into NaN).
    """
    seq_len = key_mask.shape[1]
    causal = torch.ones(seq_len, seq_len, dtype=torch.bool, device=key_mask.device).tril()
    allowed = causal.unsqueeze(0) & key_mask[:, None, :]  # (B, T, T)
    allowed = allowed | torch.eye(seq_len, dtype=torch.bool, device=key_mask.device)
    return allowed.unsqueeze(1)  # (B, 1, T, T)


class SharedComponents(nn.Module):
    """Embedding + positions, the attention of every layer, output norm and tied LM head."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.d_model)
        # Positions are a fixed function, not parameters; persistent=False keeps
        # them out of checkpoints (they are rebuilt from the config).
        self.register_buffer(
            "positions", sinusoidal_positions(config.max_seq_len, config.d_model), persistent=False
        )
        self.embedding_dropout = nn.Dropout(config.dropout)
        self.attention = nn.ModuleList(CausalSelfAttention(config) for _ in range(config.n_layers))
        self.output_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self._frozen = False
        self._trunk_dropout = True
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 style init: N(0, 0.02) for weights (the same bits on every CPU), zeros for biases, ones for norms."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                normal_init_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                normal_init_(module.weight, std=0.02)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token ids (B, T) -> residual stream (B, T, C): scaled embedding + sinusoidal positions."""
        seq_len = input_ids.shape[1]
        x = self.token_embedding(input_ids) * math.sqrt(self.config.d_model)  # (B, T, C)
        x = x + self.positions[:seq_len]  # (T, C) broadcast over the batch
        active = self.training and self._trunk_dropout
        return F.dropout(x, self.embedding_dropout.p, training=active)

    def apply_attention(
        self, x: torch.Tensor, layer_idx: int, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Run layer `layer_idx`'s attention block on the residual stream (B, T, C)."""
        if not 0 <= layer_idx < self.config.n_layers:
            raise IndexError(
                f"layer_idx {layer_idx} is out of range for a model with "
                f"{self.config.n_layers} layers (valid: 0..{self.config.n_layers - 1})"
            )
        return self.attention[layer_idx](x, attention_mask)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Residual stream (B, T, C) -> next-token logits (B, T, vocab) via the tied LM head."""
        return F.linear(self.output_norm(x), self.token_embedding.weight)

    @property
    def lm_head_weight(self) -> torch.Tensor:
        """The LM head's weight: the token embedding itself (tied, stored once)."""
        return self.token_embedding.weight

    def freeze(self) -> SharedComponents:
        """Stop all learning here: no gradients, and eval mode so dropout is off.

        Freezing only `requires_grad` would leave dropout active in the frozen
        trunk, so every expert would be trained against a noisy trunk it will
        never see at inference. Eval mode stays on until `unfreeze()`, even if a
        parent module calls `.train()`. Gradients left over from phase 1 are
        dropped: keeping them would cost as much memory as the weights.
        """
        for parameter in self.parameters():
            parameter.requires_grad_(False)
            parameter.grad = None  # a leftover phase-1 gradient would waste a full copy
        self._frozen = True
        super().train(False)
        return self

    def unfreeze(self) -> SharedComponents:
        """Make every parameter trainable again and return to train mode (phase 1, full training)."""
        for parameter in self.parameters():
            parameter.requires_grad_(True)
        self._frozen = False
        super().train(True)
        return self

    def set_trunk_dropout(self, enabled: bool) -> SharedComponents:
        """Switch the trunk's dropout (embedding, attention probabilities, residual) on or off.

        A frozen trunk runs in eval mode, so its dropout is off anyway. Switching
        it off in a *trained* trunk makes full training differ from expert
        training in `requires_grad` alone, which is what a fair memory or FLOP
        comparison needs; dropout's own cost is then measured as a separate arm.
        On (the default) restores dropout whenever the trunk is in train mode.
        """
        if not isinstance(enabled, bool):
            raise TypeError(f"enabled must be a bool, got {enabled!r}")
        self._trunk_dropout = enabled
        for block in self.attention:
            block.dropout_enabled = enabled
        return self

    @property
    def trunk_dropout(self) -> bool:
        """Whether dropout runs in the trunk when it is in train mode (see `set_trunk_dropout`)."""
        return self._trunk_dropout

    def set_attention_path(self, path: str) -> SharedComponents:
        """Restrict every layer's attention to one SDPA path: "auto", "fused" or "math".

        The path changes what attention keeps for backward (fused: q, k, v, the
        output and one logsumexp per row; math: the (B, heads, T, T)
        probabilities too), so a memory comparison has to fix it. "fused" with
        attention dropout on CPU raises: the CPU flash kernel has no dropout.
        """
        check_attention_path(path)
        for block in self.attention:
            block.attention_path = path
        return self

    @property
    def attention_path(self) -> str:
        """The SDPA path every layer is restricted to (see `set_attention_path`)."""
        return self.attention[0].attention_path if len(self.attention) else "auto"

    @property
    def is_frozen(self) -> bool:
        """True when no parameter requires a gradient and the module is in eval mode."""
        return (
            self._frozen
            and not self.training
            and not any(p.requires_grad for p in self.parameters())
        )

    def train(self, mode: bool = True) -> SharedComponents:
        """Like `nn.Module.train`, except that a frozen trunk stays in eval mode."""
        return super().train(mode and not self._frozen)

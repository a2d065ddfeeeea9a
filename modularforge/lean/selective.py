"""Selective recomputation of attention: keep the projections, recompute only the core.

Korthikanti et al. (2022) observe that in a transformer layer the tensors that
cost most memory per FLOP are attention's internals (the scores, their softmax
and dropout: B x heads x T x T) and that recomputing just those is cheap next
to recomputing the whole layer, whose matmuls dominate the FLOPs. Here the
attention block keeps what its Linears made (the q, k, v projection output)
and, in backward, recomputes only `scaled_dot_product_attention` from q, k and
v: no LayerNorm and no QKV matmul replay, unlike checkpointing the whole block.
On the fused path the kernel never materialises the scores anyway; what is
saved is its output (B x T x d_model) and one log-sum-exp per row. On the
math path, used when trunk dropout is on, the (B, heads, T, T) probabilities
and dropout mask are what is saved, which is where the selective recompute
pays most. The dropout mask is redrawn identically (the checkpoint restores
the random state).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from modularforge.model.shared import CausalSelfAttention, attention_backends


def selective_attention(block: CausalSelfAttention, x: torch.Tensor) -> torch.Tensor:
    """`block(x)` (causal, no padding mask) with the attention core recomputed in backward.

    The same ops in the same order as `CausalSelfAttention.forward`, so the
    result is bit for bit the block's; a test holds it to that.
    """
    batch, seq_len, d_model = x.shape  # (B, T, C)
    q, k, v = block.qkv(block.norm(x)).split(d_model, dim=2)  # each (B, T, C)
    head_dim = d_model // block.n_heads
    q = q.view(batch, seq_len, block.n_heads, head_dim).transpose(1, 2)  # (B, nh, T, hs)
    k = k.view(batch, seq_len, block.n_heads, head_dim).transpose(1, 2)
    v = v.view(batch, seq_len, block.n_heads, head_dim).transpose(1, 2)
    active = block.training and block.dropout_enabled
    dropout_p = block.dropout_p if active else 0.0
    if block.attention_path == "fused" and dropout_p > 0 and x.device.type == "cpu":
        raise ValueError(
            "attention path 'fused' with attention dropout cannot run on CPU: the CPU "
            "flash kernel has no dropout. Switch trunk dropout off or use the 'math' path"
        )

    def core(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        with attention_backends(block.attention_path):
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)

    if torch.is_grad_enabled() and q.requires_grad:
        y = checkpoint(core, q, k, v, use_reentrant=False)
    else:
        y = core(q, k, v)
    y = y.transpose(1, 2).contiguous().view(batch, seq_len, d_model)  # (B, T, C)
    return x + F.dropout(block.proj(y), block.dropout.p, training=active)

"""Counting a training step's FLOPs the same way on both sides of a comparison.

`torch.utils.flop_counter.FlopCounterMode` counts an op only if it has a
formula for it. On CPU the fused attention kernel
(`_scaled_dot_product_flash_attention_for_cpu` and its backward) has none, so a
step whose attention runs fused counts zero FLOPs for the scores and the
weighted sum, while the same step on the math path counts them as `bmm`. A
frozen-vs-full ratio taken across two paths would then compare different
things. `count_flops` gives the fused CPU kernel the math path's formula, and a
test checks that the two paths count the same attention FLOPs, to the FLOP.

Both count the full T x T score matrix, as the math path computes it; a causal
fused kernel may skip the masked half, which this convention does not credit
(it is the same convention on every arm).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from modularforge.lean.step import LeanOptions
from modularforge.model.config import ModelConfig

#: aten ops of `nn.Linear`, the tied LM head and the hand-written expert backward.
LINEAR_OPS = ("aten.mm", "aten.addmm", "aten.addmm_")
#: aten ops of attention's own matmuls (scores q k^T and the weighted sum p v): the
#: math path's batched matmuls, and every fused SDPA kernel, forward and backward.
ATTENTION_OPS = (
    "aten.bmm",
    "aten._scaled_dot_product_flash_attention_for_cpu",
    "aten._scaled_dot_product_flash_attention_for_cpu_backward",
    "aten._scaled_dot_product_flash_attention",
    "aten._scaled_dot_product_flash_attention_backward",
    "aten._scaled_dot_product_efficient_attention",
    "aten._scaled_dot_product_efficient_attention_backward",
    "aten._scaled_dot_product_cudnn_attention",
    "aten._scaled_dot_product_cudnn_attention_backward",
)


def _addmm_inplace_flops(self_shape, a_shape, b_shape, *args, **kwargs) -> int:  # type: ignore[no-untyped-def]
    """`c.addmm_(a, b)`: the matmul a @ b, 2*m*k*n FLOPs, as for out-of-place addmm."""
    m, k = a_shape
    return 2 * m * k * b_shape[1]


def _cpu_flash_flops(query_shape, key_shape, value_shape, *args, **kwargs) -> int:  # type: ignore[no-untyped-def]
    """The fused CPU kernel's forward: q k^T and p v, as the math path counts them."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_flash_backward_flops(  # type: ignore[no-untyped-def]
    grad_out_shape, query_shape, key_shape, value_shape, *args, **kwargs
) -> int:
    """The fused CPU kernel's backward: the gradients of q, k and v.

    torch's formula also counts re-forming the scores (q k^T), which the fused
    backward does and the math path does not (it saved them). The math path's
    backward is four bmm: grad p = g v^T, grad v = p^T g, grad q, grad k. So the
    recomputation is taken off to count both paths alike.
    """
    total = sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)
    b, h, t_q, d_q = query_shape
    return total - 2 * b * h * t_q * key_shape[2] * d_q


#: FlopCounterMode formulas for ops it has none for on CPU.
CUSTOM_FORMULAS = {
    torch.ops.aten.addmm_: _addmm_inplace_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_flash_backward_flops,
}


def count_flops(step: Callable[[], object]) -> dict[str, int]:
    """FLOPs per aten op of one call of `step` (forward, backward and optimizer).

    PyTorch's counter has no formula for the in-place `addmm_`, which the lean
    step's hand-written expert backward uses to add weight gradients straight
    into `.grad`, nor for the fused CPU attention kernel; without these those
    matmuls would count as free (see `CUSTOM_FORMULAS`).
    """
    with FlopCounterMode(display=False, custom_mapping=CUSTOM_FORMULAS) as counter:
        step()
    return {str(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}


def linear_flops(by_op: dict[str, int]) -> int:
    """The FLOPs of the Linear layers and LM head: `aten.mm` + `aten.addmm` (+ `addmm_`)."""
    return sum(by_op.get(op, 0) for op in LINEAR_OPS)


def attention_flops(by_op: dict[str, int]) -> int:
    """The FLOPs of attention's scores and weighted sum, whichever path ran them."""
    return sum(by_op.get(op, 0) for op in ATTENTION_OPS)


def attention_step_flops(config: ModelConfig, batch_size: int, seq_len: int, frozen: bool) -> int:
    """Attention-matmul FLOPs of one plain training step, from the config alone.

    Per layer, the forward runs two batched matmuls of 2*B*T*T*d_model FLOPs
    each (q k^T over all heads, then p v); the backward runs four (the
    gradients of p, v, q and k). With the trunk frozen, layer 0's attention has
    no backward at all: its input is the frozen embedding and nothing before it
    needs a gradient.
    """
    per_matmul = 2 * batch_size * seq_len * seq_len * config.d_model
    backward_layers = config.n_layers - (1 if frozen else 0)
    return config.n_layers * 2 * per_matmul + backward_layers * 4 * per_matmul


def flop_saving(
    config: ModelConfig,
    batch_size: int,
    seq_len: int,
    lean: LeanOptions | None = None,
    trunk_dropout: bool = False,
) -> dict[str, int]:
    """Matmul FLOPs that freezing the shared trunk must remove from a training step.

    With N = batch_size * seq_len tokens, a Linear with weight (out, in) costs
    2*N*in*out FLOPs for its forward, as much again for the input gradient and as
    much for the weight gradient. Freezing the trunk removes:

    * the weight gradient of every frozen Linear: per layer QKV (d -> 3d) and the
      output projection (d -> d);
    * the weight gradient of the tied LM head, 2*N*d*vocab (the embedding's own
      backward is an index-add, not a matmul);
    * the *input* gradients of layer 0's attention: its input is the frozen
      embedding, so nothing before it needs a gradient and autograd skips the
      whole block's backward. Every later attention block still passes the
      gradient through to the expert below it. That includes layer 0's
      attention matmuls: four of 2*B*T*T*d each.

    `trunk_dropout` says whether the *full* step keeps its trunk dropout on
    (the frozen trunk is in eval mode either way). Micro-batches and loss chunks
    change no FLOPs. Checkpointing does, and with `lean.checkpoint_layers` and
    `lean.recompute_expert` together (the attention blocks checkpointed on their
    own) the two steps replay different amounts, because a replay runs only
    until the last tensor the block's backward saved has been made again
    (PyTorch's non-reentrant checkpoint stops early):

    * the frozen step never replays layer 0's attention, whose backward it skips,
      while full training replays its QKV projection and its attention matmuls
      (the fused kernel saves its own output);
    * with trunk dropout, full training's dropout mask is made after the output
      projection, so its replays run that projection in every layer too. The
      frozen trunk is in eval mode (no dropout), and a Linear saves its inputs
      before it computes, so its replay stops before the projection.

    When whole layers are checkpointed the expert ends each region, and both steps
    replay the attention in full: no difference. With selective recomputation
    (`lean.selective_attention`) only attention's core is replayed, and only
    where q needs a gradient: the frozen step skips layer 0. The fused kernel is
    one op, so a replay runs both attention matmuls; on the math path (full
    training with trunk dropout) the replay stops after the dropped
    probabilities, which p @ v saves: one matmul per layer. The entry is the
    full step's replays minus the frozen step's, negative where the math path's
    shorter replays outweigh layer 0.
    """
    n = batch_size * seq_len
    d = config.d_model
    qkv = 2 * n * d * (3 * d)
    projection = 2 * n * d * d
    scores = 2 * batch_size * seq_len * seq_len * d  # one attention matmul, all heads
    saving = {
        "weight gradients of frozen attention Linears": config.n_layers * (qkv + projection),
        "weight gradient of the tied LM head": 2 * n * d * config.vocab_size,
        "input gradients of layer 0's attention Linears": qkv + projection,
        "layer 0's attention-matmul backward": 4 * scores,
    }
    if lean is not None and lean.selective_attention:
        math_path = trunk_dropout and config.dropout > 0
        full_replays = config.n_layers * (1 if math_path else 2) * scores
        frozen_replays = (config.n_layers - 1) * 2 * scores
        saving["replay of attention cores (selective)"] = full_replays - frozen_replays
    if lean is not None and lean.checkpoint_layers and lean.recompute_expert:
        saving["replay of layer 0's QKV (checkpointed attention)"] = qkv
        saving["replay of layer 0's attention matmuls"] = 2 * scores
        if trunk_dropout and config.dropout > 0:
            saving["replay of the output projections (trunk dropout)"] = (
                config.n_layers * projection
            )
    return saving

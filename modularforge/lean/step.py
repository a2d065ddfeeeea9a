"""A lean training step: the same update as the plain step, in far less memory.

The plain step keeps every activation of a whole batch alive until backward, and
at the seed preset's batch of 16 x 512 tokens those activations are ten times
the static memory. Three exact transformations shrink them without changing the
result beyond float rounding:

* gradient accumulation: run the batch as micro-batches, each scaled so that the
  summed gradient equals the full batch's mean-loss gradient;
* chunked cross-entropy: never hold the (B, T, vocab) logits at once; compute the
  loss over chunks of positions, backpropagating each chunk into the final
  hidden state before the next one is made;
* activation checkpointing: keep only each layer's input and recompute the
  layer during backward;
* a hand-written expert backward (`recompute_expert`): each expert FFN block
  saves only its input and, in backward, recomputes its hidden activations one
  at a time, freeing each as soon as its gradient is formed, and adds the weight
  gradients straight into `.grad` (`addmm_`), so no weight-sized temporary is
  made for the accumulation.

A fused AdamW also avoids the optimizer's temporaries; `make_lean_optimizer`
builds one. `LEAN_EXPERT` is the setting that keeps the seed preset's expert
step under the design's 205 MB (plus 5%) at 16 x 512 tokens per step.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from modularforge.lean.loss import one_buffer_loss_backward
from modularforge.lean.selective import selective_attention
from modularforge.model.expert import ExpertFFN
from modularforge.model.inputs import check_input_ids
from modularforge.model.trainer_model import ModuleTrainerModel


@dataclass(frozen=True)
class LeanOptions:
    """Which memory savers to use; the defaults reproduce the plain step."""

    micro_batch_size: int | None = None  # None: the whole batch at once
    loss_chunk: int | None = None  # positions per cross-entropy chunk; None: all at once
    checkpoint_layers: bool = False  # recompute each layer in backward
    recompute_expert: bool = False  # expert FFN: save only its input, hand-written backward
    one_buffer_loss: bool = False  # cross-entropy chunks hold one (chunk x vocab) buffer
    selective_attention: bool = False  # attention keeps q, k, v; recomputes only its core
    expert_rows: int | None = None  # tokens per piece of the hand-written expert backward

    def __post_init__(self) -> None:
        if self.expert_rows is not None and not self.recompute_expert:
            raise ValueError(
                "LeanOptions.expert_rows splits the hand-written expert backward: "
                "it needs recompute_expert=True"
            )
        for name in ("micro_batch_size", "loss_chunk", "expert_rows"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"LeanOptions.{name} must be None or an int >= 1, got {value!r}")
        if self.selective_attention and self.checkpoint_layers:
            raise ValueError(
                "LeanOptions.selective_attention recomputes only attention's core and "
                "checkpoint_layers recomputes whole blocks: choose one"
            )


def make_lean_optimizer(
    parameters: Iterable[nn.Parameter], lr: float = 1e-3, weight_decay: float = 0.01
) -> torch.optim.AdamW:
    """AdamW whose update makes no parameter-sized temporaries: the fused kernel.

    The default multi-tensor (`foreach`) AdamW builds temporaries as large as
    all trainable parameters together, and even the per-tensor loop
    (`foreach=False`) makes two temporaries the size of the largest weight
    (sqrt of exp_avg_sq and its division): 67 MB for the seed model's
    embedding when the trunk trains. The fused kernel updates each element in
    one pass and allocates nothing but its state (CPU and CUDA, PyTorch >= 2.4).
    """
    return torch.optim.AdamW(
        [p for p in parameters if p.requires_grad], lr=lr, weight_decay=weight_decay, fused=True
    )


def _accumulate(parameter: nn.Parameter, grad: torch.Tensor) -> None:
    """Add `grad` into `parameter.grad` in place (or make it the gradient)."""
    if parameter.grad is None:
        parameter.grad = grad
    else:
        parameter.grad.add_(grad)


def _accumulate_matmul(parameter: nn.Parameter, a: torch.Tensor, b: torch.Tensor) -> None:
    """`parameter.grad += a @ b`, written into the gradient itself: no temporary."""
    if parameter.grad is None:
        parameter.grad = a @ b
    else:
        parameter.grad.addmm_(a, b)


def _keep_mask(shape: torch.Size, p: float, like: torch.Tensor) -> torch.Tensor:
    """Dropout's keep mask as bools, drawn exactly as PyTorch's CPU dropout draws it.

    CPU dropout is `input * empty_like(input).bernoulli_(1 - p).div_(1 - p)`; the
    same `bernoulli_` call on a tensor of the same shape consumes the same random
    numbers, so the mask is bit for bit the plain step's. Kept as bools (1 byte
    per element, not 4); the float buffer lives only inside this function.
    """
    return torch.empty(shape, dtype=like.dtype, device=like.device).bernoulli_(1 - p).bool()


def _apply_dropout_(x: torch.Tensor, keep: torch.Tensor, p: float) -> torch.Tensor:
    """In place: zero the dropped elements and scale the kept ones by 1 / (1 - p)."""
    scale = torch.ones((), dtype=x.dtype, device=x.device).div_(1 - p)  # as dropout rounds it
    return x.mul_(keep).mul_(scale)  # x * 1 * scale == x * scale exactly


class _ExpertFunction(torch.autograd.Function):
    """One `ExpertFFN` block with a hand-written, memory-frugal backward.

    Forward saves only the block's input (and the random state, to redraw the
    dropout masks). Backward recomputes the LayerNorm and fc1, forms each weight
    gradient as soon as both its factors exist, frees what is no longer needed
    right away, and adds the weight gradients into `.grad` with `addmm_`. Its
    largest moment holds two (tokens x d_ff) tensors and one bool mask, where
    autograd's backward of the block would hold five tensors of that size.
    The parameters' gradients are returned as None: they have already been added.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, x: torch.Tensor, block: ExpertFFN, rows: int | None, *params: torch.Tensor
    ) -> torch.Tensor:
        ctx.block = block
        ctx.rows = rows
        ctx.p = block.dropout1.p if block.training else 0.0
        ctx.p2 = block.dropout2.p if block.training else 0.0
        ctx.rng = _rng_state(x.device) if (ctx.p > 0 or ctx.p2 > 0) else None
        ctx.save_for_backward(x)
        return _expert_forward(block, x, ctx.p, ctx.p2)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        block: ExpertFFN = ctx.block
        p, p2 = ctx.p, ctx.p2
        shape = x.shape
        c = shape[-1]
        keep1 = keep2 = None
        if ctx.rng is not None:
            with torch.random.fork_rng(devices=_rng_devices(x.device)):
                _set_rng_state(x.device, ctx.rng)
                if p > 0:
                    keep1 = _keep_mask(shape[:-1] + (block.fc1.out_features,), p, x)
                if p2 > 0:
                    keep2 = _keep_mask(shape, p2, x)
        needs_input_grad = ctx.needs_input_grad[0]  # False in layer 0 of a frozen trunk
        x2, g2 = x.reshape(-1, c), grad_out.reshape(-1, c)  # (N, C)
        n = x2.shape[0]
        rows = min(ctx.rows or n, n)
        g_x = torch.empty_like(x2) if needs_input_grad else None
        for start in range(0, n, rows):
            piece = slice(start, start + rows)
            g_x_piece = _expert_backward_rows(
                block,
                x2[piece],
                g2[piece],
                None if keep1 is None else keep1.reshape(n, -1)[piece],
                None if keep2 is None else keep2.reshape(n, c)[piece],
                p,
                p2,
                needs_input_grad,
            )
            if g_x is not None:
                g_x[piece] = g_x_piece
        nones = (None,) * len(_expert_params(block))
        if g_x is None:
            return (None, None, None) + nones
        return (g_x.reshape(shape), None, None) + nones


def _expert_backward_rows(
    block: ExpertFFN,
    x: torch.Tensor,
    grad_out: torch.Tensor,
    keep1: torch.Tensor | None,
    keep2: torch.Tensor | None,
    p: float,
    p2: float,
    needs_input_grad: bool,
) -> torch.Tensor | None:
    """The expert's backward over some rows (tokens) of x (n, C); their input gradient.

    Every op of the block is row-wise except the weight and bias gradients, which
    sum over rows and are added into `.grad` piece by piece: splitting the rows
    changes only the order of that sum, and halves the (rows x d_ff) transients.
    """
    c = x.shape[-1]
    norm = block.norm
    n, mean, rstd = torch.native_layer_norm(x, [c], norm.weight, norm.bias, norm.eps)  # (N, C)
    h = torch.addmm(block.fc1.bias, n, block.fc1.weight.t())  # (N, F)
    a = F.gelu(h, approximate=block.act.approximate)  # (N, F)
    if keep1 is not None:
        _apply_dropout_(a, keep1, p)
    g_y = grad_out if keep2 is None else _apply_dropout_(grad_out.clone(), keep2, p2)
    _accumulate(block.fc2.bias, g_y.sum(0))
    _accumulate_matmul(block.fc2.weight, g_y.t(), a)  # (C, F)
    del a
    g_a = g_y @ block.fc2.weight  # (N, F)
    del g_y
    if keep1 is not None:
        _apply_dropout_(g_a, keep1, p)
    torch.ops.aten.gelu_backward.grad_input(
        g_a, h, approximate=block.act.approximate, grad_input=g_a
    )  # in place: g_a becomes the gradient at fc1's output
    del h
    _accumulate(block.fc1.bias, g_a.sum(0))
    _accumulate_matmul(block.fc1.weight, g_a.t(), n)  # (F, C)
    del n
    g_n = g_a @ block.fc1.weight  # (N, C)
    del g_a
    g_x, g_w, g_b = torch.ops.aten.native_layer_norm_backward(
        g_n, x, [c], mean, rstd, norm.weight, norm.bias, [needs_input_grad, True, True]
    )
    _accumulate(norm.weight, g_w)
    _accumulate(norm.bias, g_b)
    if not needs_input_grad:
        return None
    return g_x.add_(grad_out)  # the residual connection


def _expert_params(block: ExpertFFN) -> tuple[nn.Parameter, ...]:
    return tuple(block.parameters())


def _expert_forward(block: ExpertFFN, x: torch.Tensor, p: float, p2: float) -> torch.Tensor:
    """`block(x)` without autograd, freeing each intermediate as soon as it is used."""
    c = x.shape[-1]
    keep1 = _keep_mask(x.shape[:-1] + (block.fc1.out_features,), p, x) if p > 0 else None
    h = block.fc1(F.layer_norm(x, [c], block.norm.weight, block.norm.bias, block.norm.eps))
    a = F.gelu(h, approximate=block.act.approximate)
    del h
    if keep1 is not None:
        _apply_dropout_(a, keep1, p)
    del keep1
    keep2 = _keep_mask(x.shape, p2, x) if p2 > 0 else None
    y = block.fc2(a)
    del a
    if keep2 is not None:
        _apply_dropout_(y, keep2, p2)
    return y.add_(x)


def _rng_devices(device: torch.device) -> list[int]:
    return [device.index or 0] if device.type == "cuda" else []


def _rng_state(device: torch.device) -> torch.Tensor:
    if device.type == "cuda":
        return torch.cuda.get_rng_state(device)
    return torch.get_rng_state()


def _set_rng_state(device: torch.device, state: torch.Tensor) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)


def _expert(
    model: ModuleTrainerModel,
    layer_idx: int,
    x: torch.Tensor,
    recompute: bool,
    rows: int | None = None,
):
    block = model.experts[layer_idx]
    if recompute and torch.is_grad_enabled():
        return _ExpertFunction.apply(x, block, rows, *_expert_params(block))
    return block(x)


def _layer(
    model: ModuleTrainerModel,
    layer_idx: int,
    x: torch.Tensor,
    recompute: bool = False,
    selective: bool = False,
    rows: int | None = None,
) -> torch.Tensor:
    """One layer as the design interleaves it: shared attention, then the expert."""
    if selective:
        x = selective_attention(model.shared.attention[layer_idx], x)
    else:
        x = model.shared.apply_attention(x, layer_idx)
    return _expert(model, layer_idx, x, recompute, rows)


def _attention(model: ModuleTrainerModel, layer_idx: int, x: torch.Tensor) -> torch.Tensor:
    return model.shared.apply_attention(x, layer_idx)


def hidden_states(
    model: ModuleTrainerModel,
    input_ids: torch.Tensor,
    checkpoint_layers: bool,
    recompute_expert: bool = False,
    selective: bool = False,
    expert_rows: int | None = None,
):
    """The residual stream after the last layer, (B, T, C), optionally checkpointed.

    With `recompute_expert`, the expert blocks already save only their inputs, so
    checkpointing wraps the attention blocks alone: in backward, a layer's
    attention is recomputed only after its expert's backward has finished, and
    the two recomputations never hold memory at the same time. With `selective`
    (and no checkpointing), attention keeps its q, k, v and recomputes only its
    core (`modularforge.lean.selective`).
    """
    x = model.shared.embed(input_ids)
    for layer_idx in range(model.config.n_layers):
        if checkpoint_layers and torch.is_grad_enabled():
            if recompute_expert:
                x = checkpoint(_attention, model, layer_idx, x, use_reentrant=False)
                x = _expert(model, layer_idx, x, True, expert_rows)
            else:
                x = checkpoint(_layer, model, layer_idx, x, use_reentrant=False)
        else:
            x = _layer(model, layer_idx, x, recompute_expert, selective, expert_rows)
    return x


def _loss_backward(
    model: ModuleTrainerModel,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    scale: float,
    chunk: int | None,
) -> float:
    """Backward of `scale * sum of token losses`, returning that (scaled) loss.

    With `chunk`, the logits of only `chunk` positions exist at a time: the head
    runs on a detached copy of the hidden state, each chunk's gradient is added
    into it, and one backward through the layers follows.
    """
    if chunk is None:
        logits = model.shared.predict(hidden)
        loss = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum"
        )
        del logits  # the loss keeps its log-softmax, not the logits: free them before backward
        (loss * scale).backward()
        return float(loss.detach()) * scale
    detached = hidden.detach().requires_grad_(True)
    total = 0.0
    for start in range(0, hidden.shape[1], chunk):
        logits = model.shared.predict(detached[:, start : start + chunk])
        loss = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]),
            targets[:, start : start + chunk].reshape(-1),
            reduction="sum",
        )
        del logits
        (loss * scale).backward()
        total += float(loss.detach()) * scale
        del loss
    grad = detached.grad
    del detached  # only its gradient is needed from here on
    hidden.backward(grad)
    return total


def lean_training_step(
    model: ModuleTrainerModel,
    batch: tuple[torch.Tensor, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    options: LeanOptions = LeanOptions(),
) -> float:
    """One optimizer step over `batch`; returns the batch's mean token loss.

    Every option is exact: the gradient equals the plain step's up to float
    summation order, because each micro-batch's summed loss is scaled by one
    over the number of tokens in the whole batch.
    """
    inputs, targets = batch
    inputs = check_input_ids(inputs, model.config)
    if targets.shape != inputs.shape:
        raise ValueError(
            f"targets must have the shape of inputs {tuple(inputs.shape)}, got {tuple(targets.shape)}"
        )
    device = next(model.parameters()).device
    inputs, targets = inputs.to(device), targets.to(device)
    micro = options.micro_batch_size or inputs.shape[0]
    scale = 1.0 / targets.numel()
    model.train()
    optimizer.zero_grad(set_to_none=True)
    loss = 0.0
    for start in range(0, inputs.shape[0], micro):
        hidden = hidden_states(
            model,
            inputs[start : start + micro],
            options.checkpoint_layers,
            options.recompute_expert,
            options.selective_attention,
            options.expert_rows,
        )
        loss_backward = one_buffer_loss_backward if options.one_buffer_loss else _loss_backward
        loss += loss_backward(
            model, hidden, targets[start : start + micro], scale, options.loss_chunk
        )
        del hidden
    optimizer.step()
    return loss


#: The lean setting measured in chapter 6b (Making 205 MB real): micro-batches of one
#: sequence, 32-position loss chunks, checkpointed attention, the hand-written expert backward.
LEAN_EXPERT = LeanOptions(
    micro_batch_size=1, loss_chunk=32, checkpoint_layers=True, recompute_expert=True
)

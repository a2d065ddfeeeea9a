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
  layer during backward.

A per-tensor AdamW (`foreach=False`) also avoids the optimizer's whole-model
temporaries; `make_lean_optimizer` builds one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .inputs import check_input_ids
from .trainer_model import ModuleTrainerModel


@dataclass(frozen=True)
class LeanOptions:
    """Which memory savers to use; the defaults reproduce the plain step."""

    micro_batch_size: int | None = None  # None: the whole batch at once
    loss_chunk: int | None = None  # positions per cross-entropy chunk; None: all at once
    checkpoint_layers: bool = False  # recompute each layer in backward

    def __post_init__(self) -> None:
        for name in ("micro_batch_size", "loss_chunk"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"LeanOptions.{name} must be None or an int >= 1, got {value!r}")


def make_lean_optimizer(
    parameters: Iterable[nn.Parameter], lr: float = 1e-3, weight_decay: float = 0.01
) -> torch.optim.AdamW:
    """AdamW that updates one tensor at a time.

    The default multi-tensor (`foreach`) AdamW builds temporaries as large as
    all trainable parameters together; the per-tensor loop's largest temporary
    is one weight matrix.
    """
    return torch.optim.AdamW(
        [p for p in parameters if p.requires_grad], lr=lr, weight_decay=weight_decay, foreach=False
    )


def _layer(model: ModuleTrainerModel, layer_idx: int, x: torch.Tensor) -> torch.Tensor:
    """One layer as the design interleaves it: shared attention, then the expert."""
    return model.experts[layer_idx](model.shared.apply_attention(x, layer_idx))


def hidden_states(model: ModuleTrainerModel, input_ids: torch.Tensor, checkpoint_layers: bool):
    """The residual stream after the last layer, (B, T, C), optionally checkpointed."""
    x = model.shared.embed(input_ids)
    for layer_idx in range(model.config.n_layers):
        if checkpoint_layers and torch.is_grad_enabled():
            x = checkpoint(_layer, model, layer_idx, x, use_reentrant=False)
        else:
            x = _layer(model, layer_idx, x)
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
        (loss * scale).backward()
        total += float(loss.detach()) * scale
        del logits, loss
    hidden.backward(detached.grad)
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
        hidden = hidden_states(model, inputs[start : start + micro], options.checkpoint_layers)
        loss += _loss_backward(
            model, hidden, targets[start : start + micro], scale, options.loss_chunk
        )
        del hidden
    optimizer.step()
    return loss

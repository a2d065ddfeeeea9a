"""Chapter 3's instruments: watch the interleaved forward pass, and break it on purpose.

The design interleaves a frozen attention block and a trainable expert FFN in every
layer. Reading the forward method tells you the order; these helpers *observe* it
(forward hooks on a real batch), count which parameters get gradients, and run the
tempting alternative -- every attention block first, then every FFN -- so the book
can show that it computes a different function, and where exactly the two part ways.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

from modularforge.model.inputs import check_input_ids
from modularforge.training.train import TrainingHistory, language_model_loss

if TYPE_CHECKING:  # matplotlib is a book extra, imported only when a figure is drawn
    from matplotlib.axes import Axes

Order = Literal["interleaved", "attention_first"]


@dataclass(frozen=True)
class CallRecord:
    """One module call seen by a forward hook, in the order the calls happened."""

    position: int  # 1-based place in the call sequence
    name: str  # where the module lives in the model, e.g. "shared.attention[0]"
    role: str  # "frozen" (no parameter requires grad) or "trainable"
    output_shape: tuple[int, ...]  # shape of the tensor the module returned

    def row(self) -> str:
        """One line of the book's trace table."""
        return f"{self.position:>2}  {self.name:<28} {str(self.output_shape):<16} {self.role}"


def _role(module: nn.Module) -> str:
    parameters = list(module.parameters())
    if parameters and all(p.requires_grad for p in parameters):
        return "trainable"
    if not any(p.requires_grad for p in parameters):
        return "frozen"
    return "mixed"


def traced_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules `trace_forward` watches, as (name, module), in the design's order."""
    shared = model.shared
    named = [("shared.token_embedding", shared.token_embedding)]
    for layer in range(model.config.n_layers):
        named.append((f"shared.attention[{layer}]", shared.attention[layer]))
        named.append((f"experts[{layer}]", model.experts[layer]))
    named.append(("shared.output_norm", shared.output_norm))
    return named


def trace_forward(model: nn.Module, input_ids: torch.Tensor) -> list[CallRecord]:
    """Run `model(input_ids)` with forward hooks and return the calls in the order they ran.

    Hooks are registered on the token embedding, every attention block, every expert
    FFN and the output norm (in an arbitrary order on purpose: the sequence comes from
    the forward pass, not from registration). The LM head has no module of its own --
    it is `F.linear` with the embedding matrix -- so the last record is the model's
    output, the logits, labelled "lm head (tied to embedding)". Hooks are always removed.
    """
    records: list[CallRecord] = []

    def make_hook(name: str, role: str) -> Callable[..., None]:
        def hook(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
            records.append(CallRecord(len(records) + 1, name, role, tuple(output.shape)))

        return hook

    watched = traced_modules(model)
    handles = [
        module.register_forward_hook(make_hook(name, _role(module)))
        for name, module in reversed(watched)
    ]
    try:
        with torch.no_grad():
            logits = model(input_ids)
    finally:
        for handle in handles:
            handle.remove()
    records.append(
        CallRecord(
            len(records) + 1,
            "lm head (tied to embedding)",
            _role(model.shared.token_embedding),
            tuple(logits.shape),
        )
    )
    return records


def format_trace(records: list[CallRecord]) -> str:
    """The trace as a fixed-width table with a header line."""
    header = f"{'#':>2}  {'module':<28} {'output shape':<16} role"
    return "\n".join([header, *(record.row() for record in records)])


def forward_attention_first(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """The tempting wrong order: every attention block first, then every expert FFN.

    Same modules, same weights, same input as `model.forward`; only the order of the
    calls changes. Returns logits (B, T, vocab). It equals the real forward pass only
    when every FFN is the identity, because layer i's attention must read what layer
    i-1's FFN wrote into the residual stream.
    """
    input_ids = check_input_ids(input_ids, model.config)
    x = model.shared.embed(input_ids)  # (B, T, C)
    for layer_idx in range(model.config.n_layers):
        x = model.shared.apply_attention(x, layer_idx, attention_mask)
    for layer_idx in range(model.config.n_layers):
        x = model.experts[layer_idx](x)
    return model.shared.predict(x)  # (B, T, vocab)


class AttentionFirstModel(nn.Module):
    """Wraps a trainer model so that its forward runs in attention-first order.

    It owns no weights (it reuses the wrapped model's), so `modularforge.training.train.evaluate`
    can score the wrong order on the same validation windows as the right one.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.config = model.config

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        return forward_attention_first(self.model, input_ids, attention_mask)


def attention_inputs(
    model: nn.Module, input_ids: torch.Tensor, order: Order = "interleaved"
) -> list[torch.Tensor]:
    """What each layer's attention block receives as input, under either order.

    Forward pre-hooks on the attention blocks record their input residual stream
    (B, T, C). Comparing the two orders layer by layer locates the dependency: layer
    0's attention reads the embedding in both orders, while layer 1's reads layer 0's
    FFN output only in the interleaved order.
    """
    if order not in ("interleaved", "attention_first"):
        raise ValueError(f"order must be 'interleaved' or 'attention_first', got {order!r}")
    seen: dict[int, torch.Tensor] = {}

    def make_hook(layer: int) -> Callable[..., None]:
        def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            seen[layer] = inputs[0].detach().clone()

        return hook

    handles = [
        block.register_forward_pre_hook(make_hook(layer))
        for layer, block in enumerate(model.shared.attention)
    ]
    try:
        with torch.no_grad():
            if order == "interleaved":
                model(input_ids)
            else:
                forward_attention_first(model, input_ids)
    finally:
        for handle in handles:
            handle.remove()
    return [seen[layer] for layer in range(model.config.n_layers)]


def attention_input_differences(model: nn.Module, input_ids: torch.Tensor) -> list[float]:
    """Max |difference| of each layer's attention input between the two orders."""
    right = attention_inputs(model, input_ids, "interleaved")
    wrong = attention_inputs(model, input_ids, "attention_first")
    return [float((a - b).abs().max()) for a, b in zip(right, wrong, strict=True)]


@dataclass(frozen=True)
class GradientCounts:
    """Which parameter tensors received a gradient from one backward pass."""

    expert_with_grad: int
    expert_total: int
    shared_with_grad: int
    shared_total: int


def gradient_counts(model: nn.Module, input_ids: torch.Tensor) -> GradientCounts:
    """One forward + backward of the next-token loss; count the tensors that got `.grad`.

    Gradients are cleared first and again afterwards, so the model is left as found.
    `input_ids` needs at least two tokens per row (inputs and shifted targets).
    """
    if input_ids.shape[1] < 2:
        raise ValueError("gradient_counts needs at least 2 tokens per row (input + target)")
    model.zero_grad(set_to_none=True)
    loss = language_model_loss(model(input_ids[:, :-1]), input_ids[:, 1:])
    loss.backward()
    expert = list(model.experts.parameters())
    shared = list(model.shared.parameters())
    counts = GradientCounts(
        expert_with_grad=sum(p.grad is not None for p in expert),
        expert_total=len(expert),
        shared_with_grad=sum(p.grad is not None for p in shared),
        shared_total=len(shared),
    )
    model.zero_grad(set_to_none=True)
    return counts


@dataclass(frozen=True)
class AdamWStepChanges:
    """Which parameter tensors one AdamW step with weight decay actually moved."""

    expert_changed: int
    expert_total: int
    shared_changed: int
    shared_total: int
    weight_decay: float
    shared_grads: str  # "none" (as autograd leaves them) or "zeros" (the control)


def adamw_step_changes(
    model: nn.Module,
    input_ids: torch.Tensor,
    *,
    weight_decay: float = 0.1,
    lr: float = 1e-2,
    zero_shared_grads: bool = False,
) -> AdamWStepChanges:
    """Hand EVERY parameter, frozen ones included, to AdamW with weight decay; take one step.

    Why: a missing `.grad` saves gradient memory, but could an optimizer that was
    (carelessly) given the frozen weights still shrink them through decoupled weight
    decay? `torch.optim.AdamW` skips every parameter whose `.grad` is None, decay
    included, so it cannot. The control, `zero_shared_grads=True`, gives the shared
    weights a zero gradient instead of none (what `zero_grad(set_to_none=False)`
    leaves behind): then weight decay does move them, so the check can fail.
    The step runs on a deep copy, so `model` is left as found.
    """
    if input_ids.shape[1] < 2:
        raise ValueError("adamw_step_changes needs at least 2 tokens per row (input + target)")
    if weight_decay <= 0:
        raise ValueError(
            f"weight_decay must be > 0 for this check to mean anything, got {weight_decay}"
        )
    work = copy.deepcopy(model)
    before = {name: p.detach().clone() for name, p in work.named_parameters()}
    optimizer = torch.optim.AdamW(work.parameters(), lr=lr, weight_decay=weight_decay)
    optimizer.zero_grad(set_to_none=True)
    language_model_loss(work(input_ids[:, :-1]), input_ids[:, 1:]).backward()
    if zero_shared_grads:
        for p in work.shared.parameters():
            p.grad = torch.zeros_like(p)
    optimizer.step()
    changed = {name: not torch.equal(p, before[name]) for name, p in work.named_parameters()}
    expert = [changed[f"experts.{name}"] for name, _ in work.experts.named_parameters()]
    shared = [changed[f"shared.{name}"] for name, _ in work.shared.named_parameters()]
    return AdamWStepChanges(
        expert_changed=sum(expert),
        expert_total=len(expert),
        shared_changed=sum(shared),
        shared_total=len(shared),
        weight_decay=weight_decay,
        shared_grads="zeros" if zero_shared_grads else "none",
    )


def _smooth(values: list[float], window: int) -> list[float]:
    """Trailing moving average (the first points average what exists so far)."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_training_curves(
    histories: Mapping[str, TrainingHistory], ax: Axes | None = None, smooth: int = 10
) -> Axes:
    """Train loss (per step, smoothed) and validation loss (eval points) for each run.

    Draws two lines per history: a solid smoothed train curve and a dashed validation
    curve with markers, in the same colour. Runs are drawn one after another on a
    shared step axis (phase 2 starts where phase 1 ended), so a two-phase run reads
    left to right. The legend sits below the axes, where it cannot cover a curve
    (the curves fill the whole plot area between them). Returns the axes.
    """
    import matplotlib.pyplot as plt

    if smooth < 1:
        raise ValueError(f"smooth must be >= 1, got {smooth}")
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 4.5), layout="constrained")
    offset = 0
    for index, (label, history) in enumerate(histories.items()):
        colour = f"C{index}"
        steps = [offset + step + 1 for step in history.steps]
        ax.plot(
            steps,
            _smooth(history.train_loss, smooth),
            color=colour,
            label=f"{label}: train (mean of {smooth} steps)",
        )
        ax.plot(
            [offset + step for step in history.eval_steps],
            history.val_loss,
            color=colour,
            linestyle="--",
            marker="o",
            label=f"{label}: validation",
        )
        offset += len(history.steps)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats)")
    ax.set_title("Training loss, phase by phase")
    # One column: two columns of these long labels are wider than the figure and
    # were cut off at both edges.
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=1, frameon=False)
    return ax

"""The peak memory of a training step, measured and predicted from the step's timeline."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from modularforge.lean.step import LeanOptions, lean_training_step, make_lean_optimizer
from modularforge.measure.memory import (
    MemoryBreakdown,
    activation_breakdown,
    check_step_settings,
    memory_budget,
    optimizer_state_tensors,
    parameter_counts,
    storage_bytes,
)
from modularforge.measure.storage_tracker import StoragePeakTracker
from modularforge.model.config import ModelConfig
from modularforge.model.trainer_model import ModuleTrainerModel, seeded_trainer_model

#: Optimizers the peak model knows: torch's default AdamW (per-tensor loop on CPU)
#: and the fused AdamW of `make_lean_optimizer`.
OPTIMIZERS = ("adamw", "adamw-fused")
#: No lean option: the plain step.
PLAIN = LeanOptions()
#: How far `peak_budget` may sit from the measured peak, relative to the measurement:
#: tests/measure/test_peak.py holds every modelled setting to it, and the book quotes it.
PEAK_TOLERANCE = 0.05


def build_optimizer(model: ModuleTrainerModel, optimizer: str) -> torch.optim.Optimizer:
    """The optimizer named `optimizer` over the model's trainable parameters."""
    if optimizer == "adamw-fused":
        return make_lean_optimizer(model.parameters())
    if optimizer == "adamw":
        return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")


def build_step(
    config: ModelConfig,
    batch_size: int,
    seq_len: int,
    frozen: bool = True,
    optimizer: str = "adamw",
    seed: int = 0,
    attention_path: str = "fused",
    trunk_dropout: bool = False,
) -> tuple[ModuleTrainerModel, torch.optim.Optimizer, tuple[torch.Tensor, torch.Tensor]]:
    """A seeded model (trunk frozen or not), its optimizer and one random batch.

    Every measurement of one step starts here, so that two settings compared
    side by side begin from the same weights and see the same tokens. The
    attention path and the trunk's dropout are set explicitly (defaults: fused,
    off), so that frozen and full steps differ in `requires_grad` alone unless
    a caller asks for more; `memory.check_step_settings` rejects combinations
    the analytic model does not describe.
    """
    check_step_settings(frozen, attention_path, trunk_dropout)
    model = seeded_trainer_model(config, frozen, seed)
    configure_trunk(model, attention_path, trunk_dropout)
    opt = build_optimizer(model, optimizer)
    generator = torch.Generator().manual_seed(seed + 1)
    inputs = torch.randint(0, config.vocab_size, (batch_size, seq_len), generator=generator)
    targets = torch.randint(0, config.vocab_size, (batch_size, seq_len), generator=generator)
    return model, opt, (inputs, targets)


def configure_trunk(model: ModuleTrainerModel, attention_path: str, trunk_dropout: bool) -> None:
    """Fix the model's attention path and trunk dropout (see `SharedComponents`)."""
    model.shared.set_attention_path(attention_path)
    model.shared.set_trunk_dropout(trunk_dropout)


def measure_lean_step(
    model: ModuleTrainerModel,
    batch: tuple[torch.Tensor, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    options: LeanOptions,
) -> MemoryBreakdown:
    """`measure_training_step` for `lean_training_step`: same categories, same peak method.

    The peak is `torch.cuda.max_memory_allocated` on CUDA; on CPU it is the static
    tensors alive at the start plus the heap high-water mark above the starting
    level (`StoragePeakTracker`: tensor storages made in the step, summed per aten op;
    within 0.1% of the heap high-water mark at the seed preset). Activations are reported as 0: with micro-batches
    and a chunked loss they are freed and re-made many times within one step, so
    the peak is the only honest figure for them.
    """
    inputs, targets = batch
    device = next(model.parameters()).device
    inputs, targets = inputs.to(device), targets.to(device)
    parameters = list(model.parameters())
    optimizer.zero_grad(set_to_none=True)
    static_at_start = storage_bytes(parameters) + storage_bytes(optimizer_state_tensors(optimizer))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        loss = lean_training_step(model, (inputs, targets), optimizer, options)
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
    else:
        with StoragePeakTracker() as tracker:
            loss = lean_training_step(model, (inputs, targets), optimizer, options)
        peak = static_at_start + tracker.increase
    grads = [p.grad for p in parameters if p.grad is not None]
    return MemoryBreakdown(
        params_frozen=storage_bytes(p for p in parameters if not p.requires_grad),
        params_trainable=storage_bytes(p for p in parameters if p.requires_grad),
        grads=storage_bytes(grads),
        optimizer_state=storage_bytes(optimizer_state_tensors(optimizer)),
        activations=0,
        peak=peak,
        loss=loss,
    )


def measure_peak(
    config: ModelConfig,
    batch_size: int,
    seq_len: int,
    frozen: bool = True,
    options: LeanOptions = PLAIN,
    optimizer: str = "adamw",
    seed: int = 0,
    attention_path: str = "fused",
    trunk_dropout: bool = False,
) -> int:
    """Measured peak bytes of one `lean_training_step` (CPU: heap high-water mark).

    The method of `memory.measure_training_step`: warm up with one step (BLAS
    workspace, optimizer state), then measure the next step with `measure_lean_step`.
    """
    model, opt, batch = build_step(
        config, batch_size, seq_len, frozen, optimizer, seed, attention_path, trunk_dropout
    )
    lean_training_step(model, batch, opt, options)  # warm-up
    return measure_lean_step(model, batch, opt, options).peak


@dataclass(frozen=True)
class PeakEstimate:
    """Analytic peak of one training step, and what is alive at that moment."""

    peak: int  # bytes
    moment: str  # which moment of the step's timeline is the highest
    alive: dict[str, int] = field(default_factory=dict)  # bytes by item at that moment
    candidates: dict[str, int] = field(default_factory=dict)  # every moment's total, for tables


def is_modelled(options: LeanOptions) -> bool:
    """Whether `peak_budget` models this setting: the plain step, or both recomputations on.

    The timelines in between (checkpointed whole layers, micro-batches without
    checkpointing) have other highest moments, which the model does not walk.
    """
    return options == PLAIN or (
        options.checkpoint_layers and options.recompute_expert and options.expert_rows is None
    )


def peak_budget(
    config: ModelConfig,
    batch_size: int,
    seq_len: int,
    frozen: bool = True,
    options: LeanOptions = PLAIN,
    optimizer: str = "adamw",
    attention_path: str = "fused",
    trunk_dropout: bool = False,
) -> PeakEstimate:
    """Predict the measured peak of `lean_training_step` from the architecture.

    The attention path ("fused" or "math") and the trunk's dropout are inputs,
    as in `memory.memory_budget`: they change what attention keeps, and on CPU
    attention dropout forces the math path.

    The step is a timeline; memory at any moment is
    static (parameters + optimizer state, alive throughout) + the gradients that
    exist by then + the activations still alive + the transients of the op
    running. The peak is the highest of a few moments, each worked out here
    from what the op sequence keeps (`memory.activation_breakdown` gives the
    saved tensors; elements are fp32, 4 bytes):

    Plain step (no option set): the whole batch's activations are alive when
    the loss backward starts, and no gradient exists yet.

    * loss backward: activations + two (B, T, vocab) transients, the gradient
      that nll_loss's backward writes and the one log_softmax's backward makes
      (the logits themselves were freed after the loss was formed);
    * embedding backward (trunk trained): all gradients + two vocab x d_model
      tensors, the embedding's dense gradient and its out-of-place sum with
      the tied LM head's gradient;
    * optimizer step: all gradients + the update's temporaries: torch's
      default CPU AdamW loops over tensors and makes two temporaries the size of
      the largest trainable tensor (sqrt of exp_avg_sq, then its division);
      fused AdamW makes none.

    Lean step (micro-batches, chunked loss, attention checkpointing, the
    hand-written expert backward): from the second micro-batch on, every
    gradient exists (with one micro-batch, those of the layers already
    traversed). What stays alive across the micro-batch is one residual-stream
    tensor (b x T x d_model) per checkpoint: each layer's attention input
    (except layer 0's when the trunk is frozen: nothing there needs recomputing)
    and expert input, the final hidden state and its gradient. Moments:

    * a loss chunk's backward: the chunk's log-softmax, nll gradient and
      log-softmax gradient (three b x chunk x vocab tensors); with the trunk
      trained, the head's weight gradient (vocab x d_model) is made before it is
      added in place. The one-buffer loss (`lean.loss`) holds one b x chunk x
      vocab tensor, plus the normed final state and its gradient, and adds the
      head's weight gradient in place (no temporary);
    * layer l's expert backward (highest at the last layer, where every
      checkpoint is alive): recomputed LayerNorm output and stats, fc1's output
      and the dropped GELU output (two b x T x d_ff tensors), the bool dropout
      masks, the gradient at the block's output and its dropout-masked copy;
    * layer l's attention backward: its recomputed saved tensors plus the
      gradient at its output and at the projection input, plus the kernel's
      gradients (fused: q, k, v and their concatenation, 6 residual-sized
      tensors; math path: one b x heads x T x T probability gradient);
    * embedding backward (trunk trained): its dense vocab x d_model gradient,
      added in place into the head's;
    * the optimizer step, as above.

    Small items (LayerNorm statistics of one chunk, scalars, index tensors) are
    left out of the transients; they are below 1% at the seed preset.
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    lean = options != PLAIN
    if not is_modelled(options):
        raise ValueError(
            "peak_budget models the plain step (LeanOptions()) and lean steps with "
            "checkpoint_layers=True and recompute_expert=True"
        )
    el = 4
    settings = {"attention_path": attention_path, "trunk_dropout": trunk_dropout}
    budget = memory_budget(config, batch_size, seq_len, frozen=frozen, **settings)
    counts = parameter_counts(config)
    static = budget.params + budget.optimizer_state
    grads_all = budget.grads
    d, f, v, heads, n_layers = (
        config.d_model,
        config.d_ff,
        config.vocab_size,
        config.n_heads,
        config.n_layers,
    )
    vc = v * d * el
    largest = max(d * f, v * d if not frozen else 0) * el
    opt_transient = 2 * largest if optimizer == "adamw" else 0
    candidates: dict[str, dict[str, int]] = {}
    candidates["optimizer step"] = {
        "static": static,
        "gradients": grads_all,
        "optimizer temporaries": opt_transient,
    }
    if not lean:
        b, t = batch_size, seq_len
        activations = budget.activations
        candidates["loss backward"] = {
            "static": static,
            "activations": activations,
            "loss gradients (2 x B x T x vocab)": 2 * b * t * v * el,
        }
        if not frozen:
            candidates["embedding backward"] = {
                "static": static,
                "gradients": grads_all,
                "embedding gradient + tied sum (2 x vocab x d_model)": 2 * vc,
            }
    else:
        b = options.micro_batch_size or batch_size
        t = seq_len
        chunk = min(options.loss_chunk or t, t)
        n_micro = -(-batch_size // b)
        btc, btf = b * t * d * el, b * t * f * el
        per_layer_grads = counts.expert_per_layer * el + (
            0 if frozen else counts.attention_per_layer * el
        )
        head_grads = 0 if frozen else (counts.token_embedding + counts.output_norm) * el

        def grads_at(layers_done: int) -> int:
            """Gradients alive once backward has reached `layers_done` layers from the top."""
            if n_micro > 1:
                return grads_all
            return head_grads + layers_done * per_layer_grads

        first_ckpt = 1 if frozen else 0  # a frozen layer 0 attention needs no recompute
        candidates["loss chunk backward"] = {
            "static": static,
            "gradients": grads_at(0),
            "checkpoints, hidden state and its gradient": (2 * n_layers - first_ckpt + 2) * btc,
        }
        if options.one_buffer_loss:  # one buffer; the normed state and its gradient
            candidates["loss chunk backward"]["chunk logits = their gradient"] = b * chunk * v * el
            candidates["loss chunk backward"]["normed state + its gradient"] = 2 * btc
        else:
            candidates["loss chunk backward"]["chunk log-softmax + 2 gradients"] = (
                3 * b * chunk * v * el
            )
        if not frozen and not options.one_buffer_loss:  # the one-buffer loss adds in place
            candidates["loss chunk backward"]["head weight gradient"] = vc
        attn_saved = activation_breakdown(config, b, t, frozen=frozen, **settings)
        masks = (btf // 4 if config.expert_dropout > 0 else 0) + (
            btc // 4 if config.expert_dropout > 0 else 0
        )
        math_path = attention_path == "math"
        for layer in reversed(range(n_layers)):
            above = n_layers - 1 - layer
            ckpt = (2 * (layer + 1) - first_ckpt + 2) * btc + (btc if above else 0)
            candidates[f"layer {layer} expert backward"] = {
                "static": static,
                "gradients": grads_at(above),
                "checkpoints, hidden state and its gradient": ckpt,
                "recomputed fc1 output + dropped GELU output": 2 * btf,
                "LayerNorm output + masked output gradient": 2 * btc,
                "dropout masks (bool)": masks,
            }
            if frozen and layer == 0:
                continue
            kernel = b * heads * t * t * el if math_path else 6 * btc
            candidates[f"layer {layer} attention backward"] = {
                "static": static,
                "gradients": grads_at(above + 1),
                "checkpoints, hidden state and its gradient": ckpt,
                "recomputed attention saved tensors": attn_saved[f"attention {layer}"],
                "attention kernel gradients": kernel + btc,
            }
        if not frozen:
            candidates["embedding backward"] = {
                "static": static,
                "gradients": grads_all,
                "embedding dense gradient": vc,
            }
    totals = {name: sum(parts.values()) for name, parts in candidates.items()}
    moment = max(totals, key=totals.get)
    return PeakEstimate(
        peak=totals[moment], moment=moment, alive=candidates[moment], candidates=totals
    )

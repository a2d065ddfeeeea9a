"""Training loops for the two phases the design describes.

* Phase 1, `train_shared`: the shared trunk is trained on the mixed corpus with a
  temporary expert (FFNs) in place; the temporary expert is then thrown away and
  the trunk is frozen.
* Phase 2, `train_expert`: the frozen trunk plus ONE new expert, trained on one
  domain. Only the expert's parameters reach the optimizer.

Both run the same loop (`fit`): AdamW, linear warm-up then cosine decay, gradient
clipping, periodic validation loss and perplexity, and a history the book plots.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from modularforge.model.config import ModelConfig
from modularforge.model.shared import SharedComponents
from modularforge.model.trainer_model import ModuleTrainerModel
from modularforge.training.data import (
    Batch,
    BatchStream,
    DomainData,
    eval_batches,
    load_domain,
    load_mixed,
    validation_batches,
)
from modularforge.training.preflight import check_device, check_train_settings
from modularforge.training.training_state import load_training_state, save_training_state


@dataclass(frozen=True)
class TrainSettings:
    """How long and how hard to train; everything that is not the model's shape."""

    steps: int = 300  # optimizer steps
    batch_size: int = 16  # sequences per step
    seq_len: int = 64  # tokens per sequence
    lr: float = 1e-2  # peak learning rate at the end of warm-up (tuned for the tiny preset)
    warmup_steps: int = 30  # linear warm-up from 0 to lr
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio at the last step
    weight_decay: float = 0.01  # AdamW decoupled weight decay (matrices only)
    betas: tuple[float, float] = (0.9, 0.95)  # AdamW moment decay rates
    grad_clip: float = 1.0  # max global gradient norm
    eval_every: int = 50  # steps between validation passes (and one at the end)
    eval_batches: int = 8  # validation batches per pass
    seed: int = 0  # seeds the initialisation, dropout and the batch order
    device: str | None = None  # None: CUDA when available, else CPU
    progress: bool = True  # show a tqdm progress bar
    # Print one line per validation pass instead: in a notebook a bar is a widget that
    # a stored page cannot replay, while lines show a reader on a slow machine that it runs.
    report_evals: bool = False

    def __post_init__(self) -> None:
        check_train_settings(self)  # every field, by name, before anything trains


@dataclass
class TrainingHistory:
    """What happened during training, for plots and tests."""

    steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    learning_rate: list[float] = field(default_factory=list)
    tokens_per_second: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    seconds: float = 0.0  # wall-clock time of the whole run

    @property
    def val_perplexity(self) -> list[float]:
        """exp(validation loss): the effective number of equally likely next tokens."""
        return [math.exp(loss) for loss in self.val_loss]

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "val_perplexity": self.val_perplexity}


class TrainingDivergedError(FloatingPointError):
    """The loss became NaN or infinite; the step is named so the run can be inspected."""


def default_device() -> torch.device:
    """CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """Turn a `device=` argument into a device, refusing CUDA where there is none."""
    if device is None:
        return default_device()
    return check_device(device)  # refuses names torch does not know, meta, absent CUDA


def lr_multiplier(step: int, settings: TrainSettings) -> float:
    """Linear warm-up to 1, then cosine decay to `min_lr_ratio` at the last step."""
    if step < settings.warmup_steps:
        return (step + 1) / settings.warmup_steps
    span = max(1, settings.steps - settings.warmup_steps)
    progress = min(1.0, (step - settings.warmup_steps) / span)
    cosine = 0.5 * (1 + math.cos(math.pi * progress))
    return settings.min_lr_ratio + (1 - settings.min_lr_ratio) * cosine


def make_optimizer(
    parameters: Iterable[nn.Parameter], settings: TrainSettings
) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on biases and LayerNorm gains)."""
    parameters = [p for p in parameters if p.requires_grad]
    decay = [p for p in parameters if p.dim() >= 2]
    no_decay = [p for p in parameters if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": settings.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=settings.lr, betas=settings.betas)


def language_model_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over every position of the batch."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


@torch.no_grad()
def evaluate_batches(model: nn.Module, batches: Iterable[Batch]) -> float:
    """Mean next-token loss over ``batches``, weighted by window count, in eval mode."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for inputs, targets in batches:
            logits = model(inputs.to(device))
            total += language_model_loss(logits, targets.to(device)).item() * len(inputs)
            count += len(inputs)
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("evaluation saw no validation windows; check seq_len and max_batches")
    return total / count


def evaluate(
    model: nn.Module,
    tokens: torch.Tensor,
    batch_size: int,
    seq_len: int,
    max_batches: int | None = None,
) -> float:
    """Mean validation loss over fixed, non-overlapping windows (weighted by window count)."""
    return evaluate_batches(model, eval_batches(tokens, batch_size, seq_len, max_batches))


def evaluate_validation(
    model: nn.Module,
    data: DomainData,
    batch_size: int,
    seq_len: int,
    max_batches: int | None = None,
) -> float:
    """Validation loss of ``data``: one domain's windows, or equal windows from every domain.

    For the mixed corpus this is the mean over domains of each domain's loss (the
    same number of windows from each), not the loss on whichever domain happens to
    come first in the concatenated stream.
    """
    return evaluate_batches(model, validation_batches(data, batch_size, seq_len, max_batches))


def fit(
    model: nn.Module,
    data: DomainData,
    settings: TrainSettings,
    description: str = "training",
    checkpoint_path: str | Path | None = None,
    checkpoint_every: int = 0,
) -> TrainingHistory:
    """The training loop both phases share. Trains the parameters that require grad.

    With `checkpoint_path` and `checkpoint_every`, the full training state is
    saved atomically every `checkpoint_every` steps; if the file already exists
    the run resumes from it and continues exactly as an uninterrupted run would.
    """
    if checkpoint_every < 0 or (checkpoint_every and checkpoint_path is None):
        raise ValueError("checkpoint_every needs a checkpoint_path and must be >= 0")
    device = next(model.parameters()).device
    optimizer = make_optimizer(model.parameters(), settings)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_multiplier(step, settings)
    )
    stream = BatchStream(data.train, settings.batch_size, settings.seq_len, seed=settings.seed)
    trained = [p for p in model.parameters() if p.requires_grad]
    history = TrainingHistory()
    started = time.perf_counter()
    start_step = 0
    if checkpoint_path is not None and Path(checkpoint_path).exists():
        start_step, saved = load_training_state(
            checkpoint_path,
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            stream=stream,
            settings=settings,
        )
        history = TrainingHistory(**saved)
    else:
        history.eval_steps.append(0)  # the "before" point of every loss curve
        history.val_loss.append(
            evaluate_validation(
                model, data, settings.batch_size, settings.seq_len, settings.eval_batches
            )
        )
    model.train()
    bar = tqdm(
        range(start_step, settings.steps),
        desc=description,
        disable=not settings.progress,
        initial=start_step,
        total=settings.steps,
    )
    for step in bar:
        step_started = time.perf_counter()
        inputs, targets = next(stream)
        loss = language_model_loss(model(inputs.to(device)), targets.to(device))
        auxiliary = getattr(model, "auxiliary_loss", None)  # e.g. a router's load balancing
        if auxiliary is not None:
            loss = loss + auxiliary
        if not torch.isfinite(loss):
            raise TrainingDivergedError(
                f"loss became {loss.item()} at step {step} of {description}; "
                "lower the learning rate or check the data"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, settings.grad_clip)
        history.learning_rate.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
        loss_value = loss.item()  # also waits for the device, so the timing below is real
        history.steps.append(step)
        history.train_loss.append(loss_value)
        history.tokens_per_second.append(
            inputs.numel() / max(time.perf_counter() - step_started, 1e-9)
        )
        if (step + 1) % settings.eval_every == 0 or step + 1 == settings.steps:
            val_loss = evaluate_validation(
                model, data, settings.batch_size, settings.seq_len, settings.eval_batches
            )
            if not math.isfinite(val_loss):
                # The training loss is checked before each update; the update itself can
                # still blow the weights up, and a run must not be saved as a success then.
                raise TrainingDivergedError(
                    f"validation loss became {val_loss} after step {step + 1} of {description}; "
                    "lower the learning rate or check the data"
                )
            history.eval_steps.append(step + 1)
            history.val_loss.append(val_loss)
            bar.set_postfix(loss=f"{loss_value:.3f}", val=f"{history.val_loss[-1]:.3f}")
            if settings.report_evals:
                print(
                    f"{description}: step {step + 1}/{settings.steps}, "
                    f"train loss {loss_value:.3f}, val loss {history.val_loss[-1]:.3f}",
                    flush=True,
                )
        if checkpoint_every and (step + 1) % checkpoint_every == 0:
            save_training_state(
                checkpoint_path,
                model=model,
                optimizer=optimizer,
                scheduler=scheduler,
                stream=stream,
                step=step + 1,
                settings=settings,
                history=history,
            )
    history.seconds += time.perf_counter() - started
    return history


def train_phase1(
    config: ModelConfig,
    settings: TrainSettings = TrainSettings(),
    data: DomainData | None = None,
    checkpoint_path: str | Path | None = None,
    checkpoint_every: int = 0,
) -> tuple[ModuleTrainerModel, TrainingHistory]:
    """Phase 1 as trained: the trunk together with the temporary FFNs it learned with.

    Returned whole (trunk still trainable) because the phase-1 model is itself worth
    keeping: it is the baseline every later phase has to beat, and its FFNs are the
    natural starting point for an expert. `train_shared` keeps only the trunk.
    """
    device = resolve_device(settings.device)
    data = data if data is not None else load_mixed(config.vocab_size)
    torch.manual_seed(settings.seed)
    shared = SharedComponents(config)
    scaffold = ModuleTrainerModel(shared, config, warn_if_unfrozen=False).to(device)
    history = fit(
        scaffold,
        data,
        settings,
        description="phase 1: shared trunk",
        checkpoint_path=checkpoint_path,
        checkpoint_every=checkpoint_every,
    )
    return scaffold, history


def train_shared(
    config: ModelConfig,
    settings: TrainSettings = TrainSettings(),
    data: DomainData | None = None,
    checkpoint_path: str | Path | None = None,
    checkpoint_every: int = 0,
) -> tuple[SharedComponents, TrainingHistory]:
    """Phase 1: train the shared trunk on the mixed corpus, then freeze it.

    The trunk cannot learn without FFNs between its attention blocks, so a
    temporary expert rides along; it is discarded afterwards, and the experts of
    phase 2 start fresh against the frozen trunk.
    """
    scaffold, history = train_phase1(config, settings, data, checkpoint_path, checkpoint_every)
    shared = scaffold.shared
    del scaffold  # the temporary FFNs are not part of the product
    return shared.freeze(), history


def train_expert(
    shared: SharedComponents,
    domain: str | DomainData,
    settings: TrainSettings = TrainSettings(),
    expert_idx: int = 0,
    checkpoint_path: str | Path | None = None,
    checkpoint_every: int = 0,
    experts: nn.ModuleList | None = None,
) -> tuple[ModuleTrainerModel, TrainingHistory]:
    """Phase 2: freeze the trunk and train one new expert on one domain.

    The expert starts from fresh weights, or from `experts` when given (a branch of
    the phase-1 FFNs, `branching.branch_expert`; it is trained in place).
    """
    device = resolve_device(settings.device)
    config = shared.config
    data = domain if isinstance(domain, DomainData) else load_domain(domain, config.vocab_size)
    shared.freeze()
    torch.manual_seed(settings.seed + 1000 * (expert_idx + 1))  # a different init per expert
    model = ModuleTrainerModel(shared, config, expert_idx=expert_idx, experts=experts).to(device)
    history = fit(
        model,
        data,
        settings,
        description=f"phase 2: expert {expert_idx} ({data.name})",
        checkpoint_path=checkpoint_path,
        checkpoint_every=checkpoint_every,
    )
    return model, history

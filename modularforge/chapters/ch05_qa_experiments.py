"""Chapter 5's experiments: the design document's two Q&A answers, put to the test.

* "What if someone forgets to call `shared.freeze()`?" -- `capture_logs` catches the
  warning `ModuleTrainerModel` logs, so the book can show it as data (level, logger,
  message) and show that a frozen trunk logs nothing.
* "Why one expert PER LAYER?" -- `SharedFFNTrainerModel` is the alternative the
  question names: one FFN module applied at every layer. `compare_expert_layouts`
  trains it and the design's per-layer expert at an equal step budget, with the same
  seed, the same batches and the same frozen trunk, and reports validation loss and
  parameter counts, so the answer is a measurement instead of an argument. A
  zero-FFN control (the trunk with no FFN at all) shows whether expert capacity
  matters in the first place. One call is one seed; `modularforge.chapters.ch05_layout_study`
  repeats it over seeds and decides with `modularforge.measure.spread.range_verdict`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from modularforge.model.config import ModelConfig
from modularforge.model.expert import ExpertFFN
from modularforge.model.shared import SharedComponents
from modularforge.model.trainer_model import ModuleTrainerModel
from modularforge.training.data import DomainData, load_domain
from modularforge.training.train import TrainSettings, evaluate_validation, fit

if TYPE_CHECKING:  # matplotlib is a book extra, imported only when a figure is drawn
    from matplotlib.axes import Axes

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- Q1: the warning


class _ListHandler(logging.Handler):
    def __init__(self, records: list[logging.LogRecord], level: int) -> None:
        super().__init__(level)
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def capture_logs(
    logger_name: str = "modularforge", level: int = logging.DEBUG
) -> Iterator[list[logging.LogRecord]]:
    """Collect the log records that `logger_name` (and its children) emit inside the block.

    Why a handler and not stderr: a record carries its level, logger name and
    message as fields, so the book can print them and tests can count them. While
    the block runs the logger's level is lowered to `level` (so nothing at or above
    it is filtered out) and propagation is switched off (so records don't also
    reach the root logger's handlers and print twice); both are restored afterwards.
    """
    records: list[logging.LogRecord] = []
    target = logging.getLogger(logger_name)
    handler = _ListHandler(records, level)
    old_level, old_propagate = target.level, target.propagate
    target.addHandler(handler)
    target.setLevel(level)
    target.propagate = False
    try:
        yield records
    finally:
        target.removeHandler(handler)
        target.setLevel(old_level)
        target.propagate = old_propagate


# --------------------------------------------------------------------------- Q2: the variant


class SharedFFNTrainerModel(ModuleTrainerModel):
    """Frozen `SharedComponents` + ONE `ExpertFFN` reused at every layer.

    The alternative to the design's one-FFN-per-layer expert: the same module object
    (the same weights) runs after every attention block, so the expert has one
    layer's worth of parameters. `d_ff` widens that single FFN (default: the
    config's), so an equal-parameter arm can use `n_layers * d_ff`. It is a
    `ModuleTrainerModel` whose expert list holds that one module at every index, so
    the forward pass, the input checks, the freeze warning and
    `trainable_parameters` (which counts a shared module once) are the design's own.
    """

    def __init__(
        self,
        shared: SharedComponents,
        config: ModelConfig,
        *,
        d_ff: int | None = None,
        warn_if_unfrozen: bool = True,
    ) -> None:
        ffn = ExpertFFN(config if d_ff is None else config.replace(d_ff=d_ff))
        repeated = nn.ModuleList([ffn] * config.n_layers)
        super().__init__(shared, config, 0, warn_if_unfrozen=warn_if_unfrozen, experts=repeated)
        self.ffn = ffn


# --------------------------------------------------------------------------- the experiment

#: The arms `compare_expert_layouts` knows, with the label the book prints.
ARMS: dict[str, str] = {
    "per_layer": "one FFN per layer (the design)",
    "shared": "one FFN shared by all layers",
    "shared_wide": "one shared FFN, n_layers x d_ff wide",
    "zero_ffn": "no FFN at all (control)",
}


def build_arm(arm: str, shared: SharedComponents) -> nn.Module:
    """The trainer model of one arm, on top of `shared` (which should be frozen)."""
    config = shared.config
    if arm == "per_layer":
        return ModuleTrainerModel(shared, config)
    if arm == "shared":
        return SharedFFNTrainerModel(shared, config)
    if arm == "shared_wide":
        return SharedFFNTrainerModel(shared, config, d_ff=config.n_layers * config.d_ff)
    if arm == "zero_ffn":
        # The control: nothing between the attention blocks, nothing to train. If the
        # FFN arms do not beat it, expert capacity buys nothing and no layout can matter.
        identity = nn.ModuleList([nn.Identity() for _ in range(config.n_layers)])
        return ModuleTrainerModel(shared, config, experts=identity)
    raise ValueError(f"unknown arm {arm!r}; choose from {sorted(ARMS)}")


def trainable_count(model: nn.Module) -> int:
    """Parameters that require a gradient (shared tensors counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@dataclass(frozen=True)
class ArmResult:
    """One arm of the layout comparison."""

    arm: str  # key in ARMS
    label: str  # human-readable description
    trainable_parameters: int
    eval_steps: tuple[int, ...]
    val_loss: tuple[float, ...]

    @property
    def final_val_loss(self) -> float:
        return self.val_loss[-1]

    @property
    def final_perplexity(self) -> float:
        return math.exp(self.val_loss[-1])


@dataclass(frozen=True)
class LayoutComparison:
    """All arms, trained at the same step budget on the same data and seed."""

    domain: str
    steps: int
    seed: int
    arms: tuple[ArmResult, ...]

    def __getitem__(self, arm: str) -> ArmResult:
        for result in self.arms:
            if result.arm == arm:
                return result
        raise KeyError(f"no arm {arm!r} in this comparison; have {[r.arm for r in self.arms]}")

    def table(self) -> str:
        """Fixed-width table: arm, trainable parameters, final val loss and perplexity."""
        lines = [f"{'arm':<38} {'trainable params':>16} {'val loss':>9} {'perplexity':>11}"]
        for r in self.arms:
            lines.append(
                f"{r.label:<38} {r.trainable_parameters:>16,} "
                f"{r.final_val_loss:>9.3f} {r.final_perplexity:>11.1f}"
            )
        return "\n".join(lines)


def compare_expert_layouts(
    shared: SharedComponents,
    domain: str | DomainData = "python",
    settings: TrainSettings | None = None,
    arms: Sequence[str] = ("per_layer", "shared", "shared_wide"),
    seed: int = 0,
) -> LayoutComparison:
    """Train each arm on `domain` against the same frozen trunk and compare.

    Fairness: every arm gets the same number of steps and the same batches
    (`settings.seed` drives the batch stream), and `torch.manual_seed(seed)` is
    called right before each arm is built, so the per-layer expert's first FFN and
    the shared FFN start from the same weights. The trunk is frozen first and is
    never changed, so every arm fits the same fixed features. An arm with nothing
    to train (`zero_ffn`) is only evaluated, once, on the same validation windows
    (its curve has the single point step 0). `settings=None` means
    `TrainSettings(progress=False)`: 300 steps, the tiny preset's defaults.
    """
    settings = settings if settings is not None else TrainSettings(progress=False)
    data = (
        domain if isinstance(domain, DomainData) else load_domain(domain, shared.config.vocab_size)
    )
    shared.freeze()
    results = []
    for arm in arms:
        if arm not in ARMS:
            raise ValueError(f"unknown arm {arm!r}; choose from {sorted(ARMS)}")
        torch.manual_seed(seed)
        model = build_arm(arm, shared)
        if trainable_count(model) == 0:
            loss = evaluate_validation(
                model, data, settings.batch_size, settings.seq_len, settings.eval_batches
            )
            eval_steps, val_loss = (0,), (loss,)
        else:
            history = fit(model, data, settings, description=f"arm {arm}")
            eval_steps, val_loss = tuple(history.eval_steps), tuple(history.val_loss)
        results.append(
            ArmResult(
                arm=arm,
                label=ARMS[arm],
                trainable_parameters=trainable_count(model),
                eval_steps=eval_steps,
                val_loss=val_loss,
            )
        )
    return LayoutComparison(domain=data.name, steps=settings.steps, seed=seed, arms=tuple(results))


def plot_layout_comparison(comparison: LayoutComparison, ax: Axes | None = None) -> Axes:
    """Validation loss against step, one line per arm (parameter count in the legend)."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(8, 4))
    for result in comparison.arms:
        ax.plot(
            result.eval_steps,
            result.val_loss,
            marker="o",
            label=f"{result.label} ({result.trainable_parameters:,} params)",
        )
    ax.set_xlabel("step")
    ax.set_ylabel("validation loss (nats)")
    ax.set_title(f"Expert layouts on '{comparison.domain}', equal step budget")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the data
    return ax

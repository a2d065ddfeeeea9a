"""Frozen against full training, one difference at a time.

`SharedComponents.freeze()` does two things: it stops the trunk's gradients
and it puts the trunk in eval mode, which switches its dropout off. On CPU the
second has a knock-on effect: attention dropout has no fused kernel there, so a
trunk that trains *with* dropout runs attention on the math path, which keeps
(B, heads, T, T) tensors for backward. Comparing "the trainer model frozen"
with "the trainer model unfrozen" therefore mixes three effects. The arms below
separate them; each differs from the one before in exactly one setting:

* **expert**: the design (trunk frozen, eval mode, fused attention);
* **full**: requires_grad on the trunk, nothing else changed (dropout off,
  fused attention): the effect of freezing alone;
* **full-math**: attention on the math path: the effect of the kernel;
* **full-dropout**: the trunk's dropout on: the effect of dropout. This is how
  the trainer model trains an unfrozen trunk by default on CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modularforge.measure.memory import MB, memory_budget
from modularforge.measure.peak import PEAK_TOLERANCE, peak_budget
from modularforge.model.config import ModelConfig


@dataclass(frozen=True)
class Arm:
    """One setting of the frozen-vs-full comparison."""

    frozen: bool
    attention_path: str  # "fused" or "math" (see shared.ATTENTION_PATHS)
    trunk_dropout: bool
    change: str  # what differs from the arm before it
    device: str  # where the effect of that change applies

    @property
    def settings(self) -> dict[str, Any]:
        """The keyword arguments of `memory_budget` / `peak_budget` / `measure_step`."""
        return {"attention_path": self.attention_path, "trunk_dropout": self.trunk_dropout}


ARMS: dict[str, Arm] = {
    "expert": Arm(True, "fused", False, "the design: trunk frozen, fused attention", "any"),
    "full": Arm(False, "fused", False, "requires_grad on the trunk (only change)", "any"),
    "full-math": Arm(
        False, "math", False, "attention on the math path (only change)", "any (where chosen)"
    ),
    "full-dropout": Arm(
        False,
        "math",
        True,
        "trunk dropout on (only change)",
        "masks: any; forcing the math path: CPU only",
    ),
}


def arm_rows(
    config: ModelConfig,
    batch_size: int,
    seq_len: int,
    measured: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Static memory, activations and the peak of each arm's plain step, in MB.

    The analytic columns are `memory_budget` and `peak_budget` fed the arm's
    attention path and trunk dropout. `measured` maps an arm's name to a
    `MemoryBreakdown` from `memory_plots.measure_step` at the same shape (with
    the same settings); where it is given, the measured activations and peak
    sit beside the analytic ones, with the peak's relative gap.
    """
    rows = []
    for name, arm in ARMS.items():
        budget = memory_budget(config, batch_size, seq_len, frozen=arm.frozen, **arm.settings)
        peak = peak_budget(config, batch_size, seq_len, arm.frozen, **arm.settings).peak
        row: dict[str, Any] = {
            "arm": name,
            "changes": arm.change,
            "static MB": budget.static / MB,
            "activations MB": budget.activations / MB,
            "peak MB": peak / MB,
        }
        if measured is not None:
            step = measured[name]
            row["measured act. MB"] = step.activations / MB
            row["measured peak MB"] = step.peak / MB
            row["peak gap"] = (peak - step.peak) / step.peak
        rows.append(row)
    return rows


def peak_gaps_within_tolerance(rows: list[dict[str, Any]]) -> bool:
    """Whether every measured peak in `arm_rows` is within `PEAK_TOLERANCE` of the analytic one."""
    return all(abs(row["peak gap"]) <= PEAK_TOLERANCE for row in rows)

"""Memory of the expert runs in a pipeline: what each run measured, and a check that can fail.

The design's promise is that training expert *i* never holds experts 0..i-1: they
live on disk. Two kinds of figure are recorded for every expert run:

* the **step peak**: one real training step of the trunk plus a fresh expert with the
  run's own batch (`measure_training_step`, after a warm-up step), measured on a
  probe so the real run's weights, RNG and data position stay untouched. It shows
  what one step costs, but it cannot see anything else the process holds.
* **live tensor bytes** of the whole process (every tensor reachable from Python,
  distinct storages counted once) just before the real run starts and again after
  its expert is saved and dropped. These see everything: an expert kept alive by a
  stray reference (a list, a callback, a notebook variable) shows up in the next
  run's "before" figure, and in this run's "after" figure.

`memory_flatness` turns those figures into a verdict with a threshold of half an
expert's weights. Its negative control (keep the finished experts alive, the same
check must fail) is in the tests and in the chapter that assembles the mixture.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import Any

import torch

from modularforge.measure.memory import measure_training_step, memory_budget, storage_bytes
from modularforge.model.shared import SharedComponents
from modularforge.model.trainer_model import ModuleTrainerModel
from modularforge.training.data import DomainData, random_batch
from modularforge.training.train import TrainSettings, make_optimizer, resolve_device

__all__ = [
    "FlatnessCheck",
    "live_tensor_bytes",
    "measure_expert_step",
    "memory_flatness",
    "memory_table",
    "plot_memory_flatness",
]


def live_tensor_bytes() -> int:
    """Bytes of the distinct storages of every tensor the Python process can reach.

    Runs the garbage collector first, so only tensors something still refers to are
    counted. This is what makes the flatness check able to fail: a finished expert
    that is still referenced anywhere is counted here.
    """
    gc.collect()
    tensors = [obj for obj in gc.get_objects() if issubclass(type(obj), torch.Tensor)]
    return storage_bytes(t for t in tensors if t.device.type != "meta")


def measure_expert_step(
    shared: SharedComponents,
    data: DomainData,
    train: TrainSettings,
    expert_idx: int,
) -> dict[str, int]:
    """Peak memory of one training step of trunk + a fresh expert, with the run's batch shape.

    Measured on a probe (a fresh expert with the same shape, batch and optimizer),
    after one warm-up step, so the real run's weights, RNG and data position are
    untouched (bit-identical resume keeps working). The probe is freed afterwards.
    """
    device = resolve_device(train.device)
    probe = ModuleTrainerModel(shared, shared.config, expert_idx=expert_idx).to(device)
    optimizer = make_optimizer(probe.parameters(), train)
    generator = torch.Generator().manual_seed(train.seed)
    batch = random_batch(data.train, train.batch_size, train.seq_len, generator)
    measure_training_step(probe, batch, optimizer)  # warm-up: BLAS workspace, AdamW state
    step = measure_training_step(probe, batch, optimizer)
    del probe, optimizer
    static = memory_budget(shared.config, train.batch_size, train.seq_len, frozen=True)
    return {
        "peak_bytes": int(step.peak),
        "static_bytes": int(step.static),
        "activation_bytes": int(step.activations),
        "analytic_static_bytes": int(static.static),
        "expert_param_bytes": int(step.params_trainable),
    }


def memory_table(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per expert run: how many experts existed before it, and its memory figures."""
    rows = []
    for domain in manifest["domains"]:
        entry = manifest["phases"]["experts"][domain]
        rows.append({"domain": domain, "experts_trained_before": entry["experts_trained_before"],
                     **entry["memory"]})  # fmt: skip
    return sorted(rows, key=lambda row: row["experts_trained_before"])


@dataclass(frozen=True)
class FlatnessCheck:
    """Does the memory held across expert runs stay flat? Bytes per run, in run order."""

    live_before: list[int]  # tensors alive when run i starts
    live_after: list[int]  # tensors alive after run i's expert is saved and dropped
    expert_bytes: int  # one expert's weights: the smallest leak the check must catch

    @property
    def threshold(self) -> int:
        """Half an expert: a kept expert adds at least its weights, rounding adds far less."""
        return self.expert_bytes // 2

    @property
    def growth(self) -> list[int]:
        """Bytes alive at the start of run i beyond those alive at the start of run 0."""
        return [before - self.live_before[0] for before in self.live_before]

    @property
    def left_behind(self) -> list[int]:
        """Bytes still alive after run i that were not alive before it."""
        return [a - b for a, b in zip(self.live_after, self.live_before, strict=True)]

    @property
    def holds(self) -> bool:
        """No run starts with, or leaves behind, as much as half an expert."""
        worst = max([*self.growth, *self.left_behind])
        return worst < self.threshold


def memory_flatness(manifest: dict[str, Any]) -> FlatnessCheck:
    """The flatness check of a pipeline run, from its manifest's live-tensor figures."""
    rows = memory_table(manifest)
    missing = [r["domain"] for r in rows if "live_before_bytes" not in r]
    if missing:
        raise ValueError(
            f"the manifest has no live-tensor figures for {missing}; it was written by an "
            "older version of the pipeline: rerun the pipeline into a new directory"
        )
    return FlatnessCheck(
        live_before=[int(r["live_before_bytes"]) for r in rows],
        live_after=[int(r["live_after_bytes"]) for r in rows],
        expert_bytes=int(rows[0]["expert_param_bytes"]),
    )


def plot_memory_flatness(manifest: dict[str, Any], ax=None, title: str | None = None):
    """Live tensor bytes before and after each expert run, and the step peak, against runs.

    If finished experts were kept, "alive before the run" would climb by one expert
    per run (the grey dash-dot line shows that slope from the first run's figure).
    """
    import matplotlib.pyplot as plt

    rows = memory_table(manifest)
    check = memory_flatness(manifest)
    x = [row["experts_trained_before"] for row in rows]
    if ax is None:
        _, ax = plt.subplots(figsize=(6.8, 4.8), layout="constrained")
    mb = 1e6
    ax.plot(x, [b / mb for b in check.live_before], "o-", label="alive when the run starts")
    ax.plot(x, [a / mb for a in check.live_after], "s--", label="alive after its expert is saved")
    kept = [(check.live_before[0] + n * check.expert_bytes) / mb for n in x]
    ax.plot(x, kept, "-.", color="grey", label="alive at start if finished experts were kept")
    ax.plot(x, [row["peak_bytes"] / mb for row in rows], "^:", color="tab:red",
            label="peak of one training step (probe)")  # fmt: skip
    for xi, row in zip(x, rows, strict=True):
        ax.annotate(row["domain"], (xi, row["peak_bytes"] / mb), textcoords="offset points",
                    xytext=(0, 6), ha="center", fontsize=9)  # fmt: skip
    ax.set_xticks(x)
    ax.set_xlabel("experts already trained before this run")
    ax.set_ylabel("memory (MB, 10^6 bytes)")
    top = max(max(kept), max(row["peak_bytes"] for row in rows) / mb)
    ax.set_ylim(0, top * 1.2)
    ax.set_title(title or "Memory held across expert runs")
    # Below the axes, so that it never covers a line.
    ax.legend(fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
    return ax

"""The lean step taken apart: add one memory saver at a time and measure each rung.

`LEAN_EXPERT` switches on five savers at once and lands the seed preset's expert
step near the design's 205 MB. Which of them does the work? A ladder answers it:
start from the plain step and add the savers one by one, in the order a reader
would reach for them, measuring the same step (same weights, same batch) on
every rung:

1. the plain step: the whole batch's activations alive at once;
2. + micro-batches (gradient accumulation);
3. + the loss over chunks of positions (never the whole (B, T, vocab) logits);
4. + checkpointed layers (each layer's input kept, the layer recomputed);
5. + the hand-written expert backward (expert blocks keep only their input);
6. + fused AdamW (no parameter-sized temporaries in the update).

Each rung reports the measured peak, the analytic peak where `peak_budget`
models that setting (the plain step and the last two rungs), the matmul FLOPs
(recomputation is paid for in FLOPs, not in bytes), the time of one step and
the loss of the first step. Every saver is exact, so that loss is the same on
every rung, with one caveat: with dropout, the plain step draws its masks for
the whole batch at once and the micro-batched rungs one sequence at a time, so
the plain rung's loss differs in the fourth digit (the same weights, other
masks). From the second rung on the masks are drawn alike and the losses agree
to float rounding.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import shlex
import time
from pathlib import Path
from typing import Any

import torch

from .bench import machine_info, write_result
from .config import ModelConfig
from .flops import count_flops, linear_flops
from .lean import LEAN_EXPERT, LeanOptions, lean_training_step
from .memory import MB, memory_budget
from .memory_plots import format_table
from .peak import PLAIN, build_step, is_modelled, measure_lean_step, peak_budget

#: The two trainings a ladder can climb: frozen trunk + expert, or nothing frozen.
TRAININGS = ("expert", "full")
#: (attention path, trunk dropout) of each training. The ladder climbs from the
#: trainer model as it trains by default: full training keeps the trunk's dropout
#: on, which on CPU puts attention on the math path. It is therefore *not* the
#: benchmark's "full" arm (which differs from the expert in freezing alone) but its
#: "full-dropout" arm; the ladder compares savers within one training, never the
#: two trainings with each other.
TRAINING_SETTINGS = {"expert": ("fused", False), "full": ("math", True)}
#: Decimals of the ladder table's columns (the rest get one).
LADDER_DECIMALS = {"peak / floor": 2, "step s": 2, "first loss": 4}


@dataclasses.dataclass(frozen=True)
class Rung:
    """One setting of the ladder: which savers are on, and which AdamW."""

    label: str
    options: LeanOptions
    optimizer: str  # one of peak.OPTIMIZERS

    @property
    def modelled(self) -> bool:
        """Whether `peak_budget` predicts this setting (plain, or both recomputations on)."""
        return is_modelled(self.options)


def lean_ladder(
    micro_batch_size: int | None = LEAN_EXPERT.micro_batch_size,
    loss_chunk: int | None = LEAN_EXPERT.loss_chunk,
) -> tuple[Rung, ...]:
    """The six rungs, from the plain step to `LEAN_EXPERT` with fused AdamW."""
    micro = LeanOptions(micro_batch_size=micro_batch_size)
    chunked = LeanOptions(micro_batch_size=micro_batch_size, loss_chunk=loss_chunk)
    checkpointed = LeanOptions(micro_batch_size, loss_chunk, checkpoint_layers=True)
    recomputed = LeanOptions(micro_batch_size, loss_chunk, True, recompute_expert=True)
    return (
        Rung("plain step", PLAIN, "adamw"),
        Rung(f"+ micro-batches of {micro_batch_size}", micro, "adamw"),
        Rung(f"+ loss in chunks of {loss_chunk} positions", chunked, "adamw"),
        Rung("+ checkpointed layers", checkpointed, "adamw"),
        Rung("+ hand-written expert backward", recomputed, "adamw"),
        Rung("+ fused AdamW", recomputed, "adamw-fused"),
    )


def measure_rung(
    config: ModelConfig,
    batch_size: int,
    seq_len: int,
    rung: Rung,
    frozen: bool = True,
    seed: int = 0,
) -> dict[str, Any]:
    """Three steps of one rung from the same seeded start: counted, timed, measured.

    The first step also serves as the warm-up (optimizer state, BLAS workspace),
    so its loss is the loss at the shared starting weights: equal on every rung.
    The timed step is a single step on CPU, so its time is only indicative on a
    shared machine; FLOPs are the exact measure of what recomputation costs.
    """
    path, dropout = TRAINING_SETTINGS["expert" if frozen else "full"]
    model, optimizer, batch = build_step(
        config, batch_size, seq_len, frozen, rung.optimizer, seed, path, dropout
    )
    losses: list[float] = []
    flops = count_flops(
        lambda: losses.append(lean_training_step(model, batch, optimizer, rung.options))
    )
    start = time.perf_counter()
    lean_training_step(model, batch, optimizer, rung.options)
    seconds = time.perf_counter() - start
    peak = measure_lean_step(model, batch, optimizer, rung.options).peak
    analytic = (
        peak_budget(
            config, batch_size, seq_len, frozen, rung.options, rung.optimizer, path, dropout
        ).peak
        if rung.modelled
        else None
    )
    return {
        "label": rung.label,
        "options": dataclasses.asdict(rung.options),
        "optimizer": rung.optimizer,
        "peak": peak,
        "analytic_peak": analytic,
        "linear_flops": linear_flops(flops),
        "step_time_s": seconds,
        "first_loss": losses[0],
    }


def run_ladder(
    config: ModelConfig,
    batch_size: int,
    seq_len: int,
    rungs: tuple[Rung, ...] | None = None,
    trainings: tuple[str, ...] = TRAININGS,
    seed: int = 0,
) -> dict[str, Any]:
    """Measure every rung for each training; a JSON-ready dict (CPU only).

    The peak is the CPU heap high-water mark (`HeapPeakTracker`), the method of
    every other CPU peak in the book, so the rungs compare with the benchmark.
    """
    unknown = [name for name in trainings if name not in TRAININGS]
    if unknown or not trainings:
        raise ValueError(f"trainings must be a non-empty subset of {TRAININGS}, got {trainings!r}")
    floors = {
        name: memory_budget(config, batch_size, seq_len, frozen=name == "expert").static
        for name in trainings
    }  # also validates batch_size and seq_len before any step is taken
    rungs = lean_ladder() if rungs is None else rungs
    results = {
        name: [
            measure_rung(config, batch_size, seq_len, rung, frozen=name == "expert", seed=seed)
            for rung in rungs
        ]
        for name in trainings
    }
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(torch.device("cpu")),
        "config": config.to_dict(),
        "batch_size": batch_size,
        "seq_len": seq_len,
        "seed": seed,
        "peak_method": "static at start + heap high-water mark sampled per aten op (mallinfo2)",
        "static_floor": floors,
        "settings": {
            name: dict(
                zip(("attention_path", "trunk_dropout"), TRAINING_SETTINGS[name], strict=True)
            )
            for name in trainings
        },
        "rungs": results,
    }


def ladder_rows(result: dict[str, Any], training: str) -> list[dict[str, Any]]:
    """One table row per rung: peak in MB, what the rung saved, peak/floor, FLOPs, time."""
    floor = result["static_floor"][training]
    rows = []
    previous = None
    for rung in result["rungs"][training]:
        analytic = rung["analytic_peak"]
        rows.append(
            {
                "rung": rung["label"],
                "peak MB": rung["peak"] / MB,
                "saved MB": None if previous is None else (previous - rung["peak"]) / MB,
                "analytic MB": None if analytic is None else analytic / MB,
                "peak / floor": rung["peak"] / floor,
                "GFLOP (matmul)": rung["linear_flops"] / 1e9,
                "step s": rung["step_time_s"],
                "first loss": rung["first_loss"],
            }
        )
        previous = rung["peak"]
    return rows


def format_ladder(result: dict[str, Any]) -> str:
    """The ladders as plain-text tables, one per training."""
    lines = [
        f"{result['machine']['device_name']} | torch {result['machine']['torch']} | "
        f"batch {result['batch_size']}x{result['seq_len']} per optimizer step",
    ]
    for training in result["rungs"]:
        floor = result["static_floor"][training]
        lines += ["", f"{training} training (static floor {floor / MB:.1f} MB)"]
        lines.append(format_table(ladder_rows(result, training), decimals=LADDER_DECIMALS))
    return "\n".join(lines)


# --- Command line ---------------------------------------------------------------------------


def add_ladder_arguments(parser: argparse.ArgumentParser) -> None:
    """The `ladder` subcommand's options (cli.py registers the subcommand)."""
    parser.add_argument("--preset", choices=["seed", "tiny"], default="seed")
    parser.add_argument("--batch-size", type=int, default=16, help="sequences per optimizer step")
    parser.add_argument("--seq-len", type=int, default=512, help="tokens per sequence")
    parser.add_argument("--micro-batch-size", type=int, default=LEAN_EXPERT.micro_batch_size)
    parser.add_argument("--loss-chunk", type=int, default=LEAN_EXPERT.loss_chunk)
    parser.add_argument(
        "--trainings", nargs="+", choices=TRAININGS, default=list(TRAININGS), help="which to climb"
    )
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.set_defaults(run=cmd_ladder)


def ladder_command(args: argparse.Namespace) -> str:
    """The command line that reproduces a run, every option spelled out."""
    parts = [
        "python", "-m", "modularforge", "ladder",
        "--preset", args.preset,
        "--batch-size", str(args.batch_size),
        "--seq-len", str(args.seq_len),
        "--micro-batch-size", str(args.micro_batch_size),
        "--loss-chunk", str(args.loss_chunk),
        "--trainings", *args.trainings,
    ]  # fmt: skip
    if args.json is not None:
        parts += ["--json", str(args.json)]
    return shlex.join(parts)


def cmd_ladder(args: argparse.Namespace) -> int:
    """Climb the ladder, print the tables and optionally write the JSON (atomically)."""
    result = run_ladder(
        ModelConfig.preset(args.preset),
        args.batch_size,
        args.seq_len,
        lean_ladder(args.micro_batch_size, args.loss_chunk),
        tuple(args.trainings),
    )
    result = {"command": ladder_command(args), "preset": args.preset, **result}
    print(format_ladder(result))
    if args.json is not None:
        write_result(args.json, result)
    return 0

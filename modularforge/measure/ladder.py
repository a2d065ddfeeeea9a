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
6. + fused AdamW (no parameter-sized temporaries in the update);
7. + the one-buffer loss (`modularforge.lean.loss`): a third of the bytes per
   position, so chunks four times longer fit the same budget;
8. selective recomputation (Korthikanti et al. 2022): attention is no longer
   checkpointed as a block; it keeps its q, k, v and recomputes only its core
   (`modularforge.lean.selective`), and the expert backward runs in two pieces of
   rows, which pays for the kept q, k, v.

Step times are taken interleaved (rung 1, 2, ..., 8, rung 1, ...) on one model,
so load from other processes hits every rung alike, and each rung's time is
reported over the plain step's. Each rung reports the measured peak, the analytic peak where `peak_budget`
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
import statistics
from pathlib import Path
from typing import Any

import torch

from modularforge.lean.step import LEAN_EXPERT, LeanOptions, lean_training_step
from modularforge.measure.bench import CLOCKS, machine_info, write_result
from modularforge.measure.flops import count_flops, linear_flops
from modularforge.measure.memory import MB, memory_budget
from modularforge.measure.peak import (
    PLAIN,
    build_optimizer,
    build_step,
    is_modelled,
    measure_lean_step,
    peak_budget,
)
from modularforge.measure.storage_tracker import CPU_PEAK_METHOD
from modularforge.measure.text_table import format_table
from modularforge.model.config import ModelConfig

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
LADDER_DECIMALS = {"peak / floor": 2, "step s": 2, "time / plain": 2, "first loss": 4}


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


#: Positions per chunk of the one-buffer loss: one 128 x vocab buffer is 8.4 MB at the
#: seed preset, as many bytes as `F.cross_entropy`'s three at 43 positions.
ONE_BUFFER_CHUNK = 128


def lean_ladder(
    micro_batch_size: int | None = LEAN_EXPERT.micro_batch_size,
    loss_chunk: int | None = LEAN_EXPERT.loss_chunk,
    one_buffer_chunk: int | None = ONE_BUFFER_CHUNK,
    expert_rows: int | None = None,
) -> tuple[Rung, ...]:
    """The eight rungs, from the plain step to selective recomputation.

    `expert_rows` (default: half a micro-batch's tokens, known only with the
    sequence length, so `run_ladder` fills it in) splits the expert backward.
    """
    micro = LeanOptions(micro_batch_size=micro_batch_size)
    chunked = LeanOptions(micro_batch_size=micro_batch_size, loss_chunk=loss_chunk)
    checkpointed = LeanOptions(micro_batch_size, loss_chunk, checkpoint_layers=True)
    recomputed = LeanOptions(micro_batch_size, loss_chunk, True, recompute_expert=True)
    one_buffer = LeanOptions(micro_batch_size, one_buffer_chunk, True, True, one_buffer_loss=True)
    selective = LeanOptions(
        micro_batch_size,
        one_buffer_chunk,
        recompute_expert=True,
        one_buffer_loss=True,
        selective_attention=True,
        expert_rows=expert_rows,
    )
    return (
        Rung("plain step", PLAIN, "adamw"),
        Rung(f"+ micro-batches of {micro_batch_size}", micro, "adamw"),
        Rung(f"+ loss in chunks of {loss_chunk} positions", chunked, "adamw"),
        Rung("+ checkpointed layers", checkpointed, "adamw"),
        Rung("+ hand-written expert backward", recomputed, "adamw"),
        Rung("+ fused AdamW", recomputed, "adamw-fused"),
        Rung(f"+ one-buffer loss, chunks of {one_buffer_chunk}", one_buffer, "adamw-fused"),
        Rung("selective recomputation", selective, "adamw-fused"),
    )


def split_expert_rows(rungs: tuple[Rung, ...], rows: int) -> tuple[Rung, ...]:
    """`rungs` with the selective rung's expert backward split into pieces of `rows`."""
    out = []
    for rung in rungs:
        if rung.options.selective_attention and rung.options.expert_rows is None:
            options = dataclasses.replace(rung.options, expert_rows=rows)
            rung = Rung(rung.label, options, rung.optimizer)
        out.append(rung)
    return tuple(out)


def measure_rung(
    config: ModelConfig,
    batch_size: int,
    seq_len: int,
    rung: Rung,
    frozen: bool = True,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Two steps of one rung from the same seeded start: counted, then measured.

    The first step also serves as the warm-up (optimizer state, BLAS workspace),
    so its loss is the loss at the shared starting weights: equal on every rung.
    Times come from `time_rungs`, interleaved over all rungs.
    """
    path, dropout = TRAINING_SETTINGS["expert" if frozen else "full"]
    model, optimizer, batch = build_step(
        config, batch_size, seq_len, frozen, rung.optimizer, seed, path, dropout
    )
    model.to(device)  # parameters keep their identity: the optimizer still holds them
    losses: list[float] = []
    flops = count_flops(
        lambda: losses.append(lean_training_step(model, batch, optimizer, rung.options))
    )
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
        "first_loss": losses[0],
    }


def time_rungs(
    config: ModelConfig,
    batch_size: int,
    seq_len: int,
    rungs: tuple[Rung, ...],
    frozen: bool = True,
    rounds: int = 3,
    seed: int = 0,
    device: str | torch.device = "cpu",
    clock: str = "wall",
) -> list[list[float]]:
    """Seconds per step of every rung, `rounds` times, interleaved; one warm-up round first.

    One model (two optimizers over it: torch's default AdamW and the fused one)
    serves every rung, so the rungs differ in the step alone; the weights drift
    from step to step, which changes no step's cost. `clock="cpu"` reads the
    process's CPU time (CPU only, one intra-op thread), as `bench --clock cpu`.
    """
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be an int >= 1, got {rounds!r}")
    device = torch.device(device)
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {sorted(CLOCKS)}, got {clock!r}")
    if clock == "cpu" and (device.type != "cpu" or torch.get_num_threads() != 1):
        raise ValueError(
            "clock 'cpu' measures a step only on a CPU with one intra-op thread; "
            "set OMP_NUM_THREADS=1 or use the wall clock"
        )
    read = CLOCKS[clock]
    path, dropout = TRAINING_SETTINGS["expert" if frozen else "full"]
    model, default_adamw, batch = build_step(
        config, batch_size, seq_len, frozen, "adamw", seed, path, dropout
    )
    model.to(device)
    optimizers = {"adamw": default_adamw, "adamw-fused": build_optimizer(model, "adamw-fused")}

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    times: list[list[float]] = [[] for _ in rungs]
    for round_index in range(rounds + 1):
        for rung, rung_times in zip(rungs, times, strict=True):
            sync()
            start = read()
            lean_training_step(model, batch, optimizers[rung.optimizer], rung.options)
            sync()
            if round_index > 0:  # round 0 warms every rung up
                rung_times.append(read() - start)
    return times


def run_ladder(
    config: ModelConfig,
    batch_size: int,
    seq_len: int,
    rungs: tuple[Rung, ...] | None = None,
    trainings: tuple[str, ...] = TRAININGS,
    seed: int = 0,
    rounds: int = 3,
    device: str | torch.device = "cpu",
    clock: str = "wall",
) -> dict[str, Any]:
    """Measure every rung for each training; a JSON-ready dict.

    On CPU the peak is the storage high-water mark (`StoragePeakTracker`), the method
    of every other CPU peak in the book, so the rungs compare with the
    benchmark; on CUDA it is `torch.cuda.max_memory_allocated`. Times: `rounds`
    interleaved rounds over all rungs (`time_rungs`), min and median per rung,
    and each over the plain step's (the first rung).
    """
    unknown = [name for name in trainings if name not in TRAININGS]
    if unknown or not trainings:
        raise ValueError(f"trainings must be a non-empty subset of {TRAININGS}, got {trainings!r}")
    floors = {
        name: memory_budget(config, batch_size, seq_len, frozen=name == "expert").static
        for name in trainings
    }  # also validates batch_size and seq_len before any step is taken
    rungs = lean_ladder() if rungs is None else rungs
    micro = min(rungs[-1].options.micro_batch_size or batch_size, batch_size)
    rungs = split_expert_rows(rungs, max(1, micro * seq_len // 2))
    device = torch.device(device)
    results: dict[str, list[dict[str, Any]]] = {}
    for name in trainings:
        frozen = name == "expert"
        rows = [
            measure_rung(config, batch_size, seq_len, rung, frozen, seed, device) for rung in rungs
        ]
        times = time_rungs(config, batch_size, seq_len, rungs, frozen, rounds, seed, device, clock)
        plain_min, plain_median = min(times[0]), statistics.median(times[0])
        for row, rung_times in zip(rows, times, strict=True):
            row["step_times_s"] = rung_times
            row["min_s"] = min(rung_times)
            row["step_time_s"] = statistics.median(rung_times)
            row["time_over_plain_min"] = row["min_s"] / plain_min
            row["time_over_plain_median"] = row["step_time_s"] / plain_median
        results[name] = rows
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(device),
        "rounds": rounds,
        "clock": clock,
        "config": config.to_dict(),
        "batch_size": batch_size,
        "seq_len": seq_len,
        "seed": seed,
        "peak_method": "torch.cuda.max_memory_allocated"
        if device.type == "cuda"
        else CPU_PEAK_METHOD,
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
                "time / plain": rung.get("time_over_plain_median"),
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
    """The `ladder` subcommand's options (`cli.main` registers the subcommand)."""
    parser.add_argument("--preset", choices=["seed", "tiny"], default="seed")
    parser.add_argument("--batch-size", type=int, default=16, help="sequences per optimizer step")
    parser.add_argument("--seq-len", type=int, default=512, help="tokens per sequence")
    parser.add_argument("--micro-batch-size", type=int, default=LEAN_EXPERT.micro_batch_size)
    parser.add_argument("--loss-chunk", type=int, default=LEAN_EXPERT.loss_chunk)
    parser.add_argument(
        "--one-buffer-chunk", type=int, default=ONE_BUFFER_CHUNK, help="one-buffer loss chunk"
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--clock", choices=sorted(CLOCKS), default="wall", help="cpu: one thread, CPU time"
    )
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
        "--one-buffer-chunk", str(args.one_buffer_chunk),
        "--rounds", str(args.rounds),
        "--device", str(args.device),
        "--clock", args.clock,
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
        lean_ladder(args.micro_batch_size, args.loss_chunk, args.one_buffer_chunk),
        tuple(args.trainings),
        rounds=args.rounds,
        device=args.device,
        clock=args.clock,
    )
    result = {"command": ladder_command(args), "preset": args.preset, **result}
    print(format_ladder(result))
    if args.json is not None:
        write_result(args.json, result)
    return 0

"""`python -m modularforge bench` on the command line: its options, report and command echo.

`modularforge.measure.bench` measures; this module turns a result into tables and
spells out the command that reproduces it.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any

import torch

from modularforge.lean.step import LeanOptions
from modularforge.measure.bench import CLOCKS, run_bench, write_result
from modularforge.measure.memory import MB
from modularforge.model.config import ModelConfig

# --- Report ------------------------------------------------------------------------------


def format_report(result: dict[str, Any]) -> str:
    """The results as readable tables: time and throughput, memory by category, ratios."""
    rows = result["results"]
    lines = [
        f"{result['machine']['device_name']} | torch {result['machine']['torch']} | "
        f"batch {result['batch_size']}x{result['seq_len']} | {result['steps']} timed steps each"
        + (f" | lean {result['lean']}" if result["lean"] else ""),
        "",
        f"{'config':12} {'median s':>9} {'min s':>8} {'max s':>8} {'IQR s':>8} "
        f"{'tokens/s':>9} {'GFLOP':>8} {'GFLOP/s':>8} {'of line':>8}",
    ]
    for name, row in rows.items():
        best = row["achieved"]["min"]
        lines.append(
            f"{name:12} {row['median_s']:9.3f} {row['min_s']:8.3f} {row['max_s']:8.3f} "
            f"{row['iqr_s']:8.3f} {row['tokens_per_s']:9.0f} {row['flops'] / 1e9:8.2f} "
            f"{best['flops_per_s'] / 1e9:8.1f} {best['fraction_of_line']:8.2f}"
        )
    roofline = result["roofline"]
    for dtype, line in roofline["lines"].items():
        lines.append(
            f"machine's {dtype} matmul line on the model's Linear shapes: "
            f"{line['flops_per_s'] / 1e9:.1f} GFLOP/s (best single matmul "
            f"{line['best_matmul_flops_per_s'] / 1e9:.1f})"
            + (" <- reference" if dtype == roofline["reference"] else "")
        )
    categories = ("params_frozen", "params_trainable", "grads", "optimizer_state", "activations")
    lines += [
        "",
        f"{'MB (10^6 B)':12} "
        + " ".join(f"{c[:12]:>12}" for c in categories)
        + f" {'peak':>9} {'floor':>9} {'peak/floor':>10}",
    ]
    for name, row in rows.items():
        memory = row["memory"]
        cells = " ".join(
            f"{'-':>12}" if memory[c] is None else f"{memory[c] / MB:12.1f}" for c in categories
        )
        lines.append(
            f"{name:12} {cells} {memory['peak'] / MB:9.1f} {row['analytic_floor'] / MB:9.1f} "
            f"{row['peak_over_floor']:10.2f}"
        )
    ratios = result["ratios"]
    check = result["flop_check"]
    lines += [
        "",
        f"expert / full peak memory          {ratios['expert_over_full_peak']:.3f}",
        f"expert / full step time (minimums) {ratios['expert_over_full_step_time_min']:.3f}",
        f"expert / full step time (medians)  {ratios['expert_over_full_step_time_median']:.3f}",
        f"expert / full FLOPs                {ratios['expert_over_full_flops']:.3f}",
        f"expert / baseline tokens per s     {ratios['expert_over_baseline_tokens_per_s']:.3f}",
        f"full-math / full peak memory       {ratios['full_math_over_full_peak']:.3f}",
        f"full-dropout / full-math peak      {ratios['full_dropout_over_full_math_peak']:.3f}",
        f"FLOPs saved by freezing: counted {check['counted_flop_difference']:,}, "
        f"expected {check['expected_total']:,} ({'match' if check['matches'] else 'MISMATCH'})",
    ]
    return "\n".join(lines)


# --- Command line ------------------------------------------------------------------------


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """The `bench` subcommand's options (`cli.main` registers the subcommand)."""
    parser.add_argument("--preset", choices=["seed", "tiny"], default="seed")
    parser.add_argument("--batch-size", type=int, default=4, help="sequences per step")
    parser.add_argument("--seq-len", type=int, default=256, help="tokens per sequence")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per configuration")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--micro-batch-size", type=int, default=None, help="lean: micro-batches")
    parser.add_argument("--loss-chunk", type=int, default=None, help="lean: positions per chunk")
    parser.add_argument(
        "--checkpoint-layers", action="store_true", help="lean: recompute layers in backward"
    )
    parser.add_argument(
        "--recompute-expert",
        action="store_true",
        help="lean: expert FFNs keep only their input and recompute in backward",
    )
    parser.add_argument(
        "--one-buffer-loss", action="store_true", help="lean: one chunk x vocab buffer per chunk"
    )
    parser.add_argument(
        "--selective-attention",
        action="store_true",
        help="lean: attention keeps q, k, v and recomputes only its core",
    )
    parser.add_argument(
        "--expert-rows", type=int, default=None, help="lean: rows per expert-backward piece"
    )
    parser.add_argument("--fused-adamw", action="store_true", help="AdamW(fused=True)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA only)")
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="wall time, or CPU time of the process (CPU, OMP_NUM_THREADS=1 only)",
    )
    parser.set_defaults(run=cmd_bench)


def bench_command(args: argparse.Namespace) -> str:
    """The full command line that reproduces a run, every option spelled out."""
    parts = [
        "python", "-m", "modularforge", "bench",
        "--preset", args.preset,
        "--batch-size", str(args.batch_size),
        "--seq-len", str(args.seq_len),
        "--steps", str(args.steps),
        "--warmup", str(args.warmup),
        "--device", str(args.device),
        "--clock", args.clock,
    ]  # fmt: skip
    if args.micro_batch_size is not None:
        parts += ["--micro-batch-size", str(args.micro_batch_size)]
    if args.loss_chunk is not None:
        parts += ["--loss-chunk", str(args.loss_chunk)]
    if args.expert_rows is not None:
        parts += ["--expert-rows", str(args.expert_rows)]
    for flag in (
        "checkpoint_layers",
        "recompute_expert",
        "one_buffer_loss",
        "selective_attention",
        "fused_adamw",
        "bf16",
    ):
        if getattr(args, flag):
            parts.append("--" + flag.replace("_", "-"))
    if args.json is not None:
        parts += ["--json", str(args.json)]
    return shlex.join(parts)


def cmd_bench(args: argparse.Namespace) -> int:
    """Run the benchmark, print its tables and optionally write the JSON."""
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    lean = None
    if (
        args.micro_batch_size is not None
        or args.loss_chunk is not None
        or args.checkpoint_layers
        or args.recompute_expert
        or args.one_buffer_loss
        or args.selective_attention
    ):
        lean = LeanOptions(
            micro_batch_size=args.micro_batch_size,
            loss_chunk=args.loss_chunk,
            checkpoint_layers=args.checkpoint_layers,
            recompute_expert=args.recompute_expert,
            one_buffer_loss=args.one_buffer_loss,
            selective_attention=args.selective_attention,
            expert_rows=args.expert_rows,
        )
    result = run_bench(
        ModelConfig.preset(args.preset),
        args.batch_size,
        args.seq_len,
        args.steps,
        device=args.device,
        warmup=args.warmup,
        lean=lean,
        fused_adamw=args.fused_adamw,
        bf16=args.bf16,
        clock=args.clock,
    )
    result = {"command": bench_command(args), "preset": args.preset, **result}
    print(format_report(result))
    if args.json is not None:
        write_result(args.json, result)
    return 0

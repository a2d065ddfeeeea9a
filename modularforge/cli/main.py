"""Command line: `python -m modularforge {budget,train-shared,train-expert,info,bench,ladder,train-experts,pipeline,pipeline-seeds}`.

Every subcommand is a thin wrapper over the package's functions, so the command
line and the book print the same numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Sequence
from functools import partial
from pathlib import Path

from modularforge.files.output_paths import nonempty_path, save_or_rescue
from modularforge.measure.memory import (
    DOC_ADAMW_MB,
    DOC_BUDGET_MB,
    DOC_EXPERT_MB,
    DOC_EXPERT_PARAMS,
    DOC_SHARED_MB,
    DOC_SHARED_PARAMS,
    DOC_UNFROZEN_MB,
    DOC_UNFROZEN_RATIO,
    MB,
    memory_budget,
    parameter_counts,
)
from modularforge.model.config import ModelConfig
from modularforge.training.preflight import MAX_EXPERT_IDX, MAX_SEED, bounded_int_argument


def budget_table(config: ModelConfig, batch_size: int, seq_len: int) -> str:
    """The design document's memory table beside the one computed from `config`."""
    counts = parameter_counts(config)
    frozen = memory_budget(config, batch_size, seq_len, frozen=True)
    unfrozen = memory_budget(config, batch_size, seq_len, frozen=False)

    def mb(n_bytes: int) -> str:
        return f"{n_bytes / MB:10.1f} MB"

    rows = [
        ("parameters: shared trunk", f"{DOC_SHARED_PARAMS / 1e6:.0f}M", f"{counts.shared:,}"),
        ("parameters: one expert", f"{DOC_EXPERT_PARAMS / 1e6:.1f}M", f"{counts.expert:,}"),
        ("shared params (frozen)", f"{DOC_SHARED_MB} MB", mb(frozen.params_frozen)),
        ("expert params", f"{DOC_EXPERT_MB} MB", mb(frozen.params_trainable)),
        ("expert grads", f"{DOC_EXPERT_MB} MB", mb(frozen.grads)),
        ("AdamW state", f"{DOC_ADAMW_MB} MB", mb(frozen.optimizer_state)),
        ("static total, frozen", f"~{DOC_BUDGET_MB} MB", mb(frozen.static)),
        ("static total, unfrozen", f"{DOC_UNFROZEN_MB} MB", mb(unfrozen.static)),
        (
            "unfrozen / frozen (static)",
            f"{DOC_UNFROZEN_RATIO}x",
            f"{unfrozen.static / frozen.static:10.2f}x",
        ),
        (
            f"activations, frozen, batch {batch_size}x{seq_len}",
            "not counted",
            mb(frozen.activations),
        ),
        (
            f"activations, unfrozen, batch {batch_size}x{seq_len}",
            "not counted",
            mb(unfrozen.activations),
        ),
        ("total with activations, frozen", "", mb(frozen.total)),
        ("total with activations, unfrozen", "", mb(unfrozen.total)),
    ]
    width = max(len(row[0]) for row in rows)
    lines = [
        f"model: d_model={config.d_model} n_heads={config.n_heads} n_layers={config.n_layers} "
        f"d_ff={config.d_ff} vocab={config.vocab_size} (fp32, AdamW; MB = 10^6 bytes)",
        f"{'':{width}}  {'design doc':>12}  {'computed':>16}",
    ]
    lines += [f"{name:{width}}  {doc:>12}  {ours:>16}" for name, doc, ours in rows]
    return "\n".join(lines)


def _cmd_budget(args: argparse.Namespace) -> int:
    from modularforge.training.preflight import check_int

    config = ModelConfig.preset(args.preset)
    # Defaults follow the preset: its longest sequence (512 for seed, 128 for tiny).
    seq_len = config.max_seq_len if args.seq_len is None else args.seq_len
    check_int("budget", "batch_size", args.batch_size)
    check_int("budget", "seq_len", seq_len, maximum=config.max_seq_len)
    print(budget_table(config, args.batch_size, seq_len))
    return 0


def _settings(args: argparse.Namespace):
    from modularforge.training.train import TrainSettings

    return TrainSettings(
        steps=args.steps,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        lr=args.lr,
        seed=args.seed,
        device=args.device,
        progress=not args.no_progress,
    )


def _print_history(history) -> None:
    for step, loss in zip(history.eval_steps, history.val_loss, strict=True):
        print(f"step {step:5d}  val loss {loss:.4f}  perplexity {2.718281828**loss:10.2f}")
    print(f"trained {history.steps[-1] + 1} steps in {history.seconds:.1f} s")


def _cmd_train_shared(args: argparse.Namespace) -> int:
    from modularforge.files.checkpoint import save_shared
    from modularforge.training.preflight import check_step_memory
    from modularforge.training.train import train_shared

    config, settings = ModelConfig.preset(args.preset), _settings(args)
    check_step_memory(config, settings.batch_size, settings.seq_len, settings.device)
    shared, history = train_shared(config, settings)
    _print_history(history)
    saved = save_or_rescue(partial(save_shared, shared.cpu()), args.out, "shared trunk")
    print(f"saved shared trunk to {saved}")
    return 0


def _cmd_train_expert(args: argparse.Namespace) -> int:
    from modularforge.files.checkpoint import load_shared, save_expert
    from modularforge.training.preflight import check_step_memory
    from modularforge.training.train import train_expert

    settings = _settings(args)
    shared = load_shared(args.shared)
    check_step_memory(shared.config, settings.batch_size, settings.seq_len, settings.device)
    model, history = train_expert(shared, args.domain, settings, expert_idx=args.expert_idx)
    _print_history(history)
    saved = save_or_rescue(partial(save_expert, model.cpu()), args.out, f"expert {args.expert_idx}")
    print(f"saved expert {args.expert_idx} to {saved}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from modularforge.files.checkpoint import read_metadata

    print(json.dumps(read_metadata(args.checkpoint), indent=2, default=str))
    return 0


def _add_training_arguments(parser: argparse.ArgumentParser, steps: int) -> None:
    parser.add_argument("--steps", type=int, default=steps, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=16, help="sequences per step")
    parser.add_argument("--seq-len", type=int, default=64, help="tokens per sequence")
    parser.add_argument("--lr", type=float, default=1e-2, help="peak learning rate")
    parser.add_argument(
        "--seed",
        type=bounded_int_argument(0, MAX_SEED),
        default=0,
        help="seed for init, dropout and batches",
    )
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m modularforge",
        description="Train a language model in parts: a frozen shared trunk plus small experts.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    budget = commands.add_parser(
        "budget", help="print the memory budget beside the design document's figures"
    )
    budget.add_argument("--preset", choices=["seed", "tiny"], default="seed")
    budget.add_argument("--batch-size", type=int, default=16, help="for the activation rows")
    budget.add_argument(
        "--seq-len",
        type=int,
        default=None,
        help="for the activation rows (default: the preset's max)",
    )
    budget.set_defaults(run=_cmd_budget)

    shared = commands.add_parser("train-shared", help="phase 1: train the shared trunk")
    shared.add_argument("--preset", choices=["seed", "tiny"], default="tiny")
    shared.add_argument(
        "--out", type=nonempty_path, required=True, help="where to write shared.safetensors"
    )
    _add_training_arguments(shared, steps=300)
    shared.set_defaults(run=_cmd_train_shared)

    expert = commands.add_parser("train-expert", help="phase 2: train one expert on one domain")
    expert.add_argument("--shared", type=Path, required=True, help="a shared-trunk checkpoint")
    expert.add_argument("--domain", required=True, help="a corpus name from data/corpus")
    expert.add_argument(
        "--expert-idx",
        type=bounded_int_argument(0, MAX_EXPERT_IDX),
        default=0,
        help="index stored in the checkpoint",
    )
    expert.add_argument(
        "--out", type=nonempty_path, required=True, help="where to write the expert file"
    )
    _add_training_arguments(expert, steps=300)
    expert.set_defaults(run=_cmd_train_expert)

    info = commands.add_parser("info", help="print a checkpoint's metadata")
    info.add_argument("checkpoint", type=Path)
    info.set_defaults(run=_cmd_info)

    from modularforge.cli.bench import add_bench_arguments

    bench = commands.add_parser(
        "bench", help="time and measure expert vs full training vs a plain GPT"
    )
    add_bench_arguments(bench)

    from modularforge.measure.ladder import add_ladder_arguments

    ladder = commands.add_parser(
        "ladder", help="add the lean step's memory savers one at a time and measure each"
    )
    add_ladder_arguments(ladder)

    from modularforge.pipeline.distributed import add_train_experts_arguments

    experts = commands.add_parser(
        "train-experts", help="phase 2 for many experts, spread over processes (torchrun)"
    )
    add_train_experts_arguments(experts)

    from modularforge.cli.pipeline import add_pipeline_arguments

    pipeline = commands.add_parser(
        "pipeline", help="all three phases (trunk, experts, routers), resumable, then evaluation"
    )
    add_pipeline_arguments(pipeline)

    from modularforge.pipeline.seed_study import add_seed_study_arguments

    seeds = commands.add_parser(
        "pipeline-seeds", help="summarise pipeline runs that differ only in their seed"
    )
    add_seed_study_arguments(seeds)

    from modularforge.cli.generate import add_generate_arguments

    add_generate_arguments(commands.add_parser("generate", help="continue a prompt with a model"))
    return parser


def path_roles(args: argparse.Namespace) -> tuple[dict[str, list[Path]], dict[str, list[Path]]]:
    """(files the command writes, files it reads), by option: checked against each other."""
    command = args.command
    if command in ("train-shared", "train-expert"):
        outputs = {"--out": [args.out]}
    elif command == "train-experts":
        from modularforge.pipeline.distributed import MANIFEST_NAME, expert_filename, parse_domains

        names = [expert_filename(i, d) for i, d in enumerate(parse_domains(args.domains))]
        outputs = {"--out": [args.out, *(args.out / n for n in [*names, MANIFEST_NAME])]}
    elif command == "pipeline-seeds":
        outputs = {"--json": [args.json]}
    else:
        outputs = {}
    inputs: dict[str, list[Path]] = {}
    if getattr(args, "shared", None) is not None:
        inputs["--shared"] = [Path(args.shared)]
    if command == "pipeline-seeds":
        inputs["a run"] = [*args.runs, *(run / "manifest.json" for run in args.runs)]
    return outputs, inputs


def check_output_locations(args: argparse.Namespace) -> None:
    """Refuse an output that cannot be written before the command does any work.

    `pipeline` checks its own folder when it first needs to write (so a finished
    run on read-only storage can still be verified).
    """
    from modularforge.files.output_paths import check_output_folder, check_writable_file
    from modularforge.pipeline.folders import enclosing_pipeline_folder

    for option in ("--out", "--json"):
        target = getattr(args, option[2:], None)
        if target is None or not isinstance(target, str | os.PathLike):
            continue
        folder = enclosing_pipeline_folder(target)
        if folder is not None:
            raise ValueError(
                f"{option} {target} lies inside the pipeline folder {folder}, whose files only "
                f"`pipeline` writes (under its lock and manifest); choose a path outside it"
            )
    if args.command in ("train-shared", "train-expert"):
        check_writable_file(args.out, "--out")
    elif args.command == "train-experts":
        check_output_folder(args.out, "--out")
    elif getattr(args, "json", None) is not None:
        check_writable_file(args.json, "--json")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; errors the user can fix are printed as one line, without a traceback.

    `modularforge.cli.errors.describe` decides which errors those are and what to say.
    """
    from modularforge.cli.errors import exit_line, raise_terminated
    from modularforge.files.output_paths import refuse_outputs_among_inputs

    args = build_parser().parse_args(argv)
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, raise_terminated) if on_main_thread else None
    try:
        refuse_outputs_among_inputs(*path_roles(args))
        check_output_locations(args)  # before any training: a lost model is the cost
        return args.run(args)
    except BaseException as error:
        mapped = exit_line(error)
        if mapped is None:
            raise
        status, line = mapped
        if isinstance(error, KeyboardInterrupt):
            print(file=sys.stderr)  # a progress bar or a "^C" may have left the line open
        print(f"error: {line}", file=sys.stderr)
        return status
    finally:
        if on_main_thread:
            signal.signal(signal.SIGTERM, previous)

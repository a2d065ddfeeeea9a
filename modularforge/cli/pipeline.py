"""`python -m modularforge pipeline`: the command line of `run_pipeline`."""

from __future__ import annotations

import time

from modularforge.files.output_paths import nonempty_path
from modularforge.pipeline.run import PipelineSettings, run_pipeline
from modularforge.training.preflight import MAX_SEED, bounded_int_argument


def add_pipeline_arguments(parser) -> None:
    """Arguments of `python -m modularforge pipeline` (registered by `modularforge.cli.main`)."""
    defaults = PipelineSettings()
    parser.add_argument("--preset", choices=["seed", "tiny"], default=defaults.preset)
    parser.add_argument("--out", type=nonempty_path, required=True, help="folder for every output")
    parser.add_argument("--steps", type=int, default=defaults.steps, help="phase 1 steps")
    parser.add_argument(
        "--expert-steps", type=int, default=defaults.expert_steps, help="phase 2 steps per expert"
    )
    parser.add_argument(
        "--router-steps", type=int, default=defaults.router_steps, help="phase 3 steps per router"
    )
    parser.add_argument(
        "--top-k",
        type=int,
        nargs="+",
        choices=[1, 2],
        default=list(defaults.top_k),
        help="mixtures to assemble: experts per token (1, 2 or both)",
    )
    parser.add_argument(
        "--expert-init", choices=PipelineSettings.CHOICES["expert_init"],
        default=defaults.expert_init,
        help="phase 2 starts from a copy of the phase-1 FFNs (branched) or from random weights",
    )  # fmt: skip
    parser.add_argument(
        "--mixing-steps", type=int, default=defaults.mixing_steps,
        help="steps of the mixing stage after the routers (0: none)",
    )  # fmt: skip
    parser.add_argument(
        "--mixing-trainable", choices=PipelineSettings.CHOICES["mixing_trainable"],
        default=defaults.mixing_trainable, help="what the mixing stage trains",
    )  # fmt: skip
    parser.add_argument(
        "--expert-lr", type=float, default=defaults.expert_lr, help="phase 2 learning rate"
    )
    parser.add_argument(
        "--mixing-lr", type=float, default=defaults.mixing_lr, help="mixing stage learning rate"
    )
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--seq-len", type=int, default=defaults.seq_len)
    parser.add_argument("--aux-loss-weight", type=float, default=defaults.aux_loss_weight)
    parser.add_argument(
        "--checkpoint-every", type=int, default=defaults.checkpoint_every,
        help="training-state checkpoint interval in steps (0: none)",
    )  # fmt: skip
    parser.add_argument(
        "--no-dense", action="store_true", help="skip the dense baseline at equal tokens"
    )
    parser.add_argument(
        "--eval-max-batches", type=int, default=None, help="validation batches per domain"
    )
    parser.add_argument("--seed", type=bounded_int_argument(0, MAX_SEED), default=defaults.seed)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    parser.set_defaults(run=_cmd_pipeline)


def _cmd_pipeline(args) -> int:
    settings = PipelineSettings(
        preset=args.preset,
        steps=args.steps,
        expert_steps=args.expert_steps,
        router_steps=args.router_steps,
        top_k=tuple(sorted(set(args.top_k))),
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        aux_loss_weight=args.aux_loss_weight,
        expert_init=args.expert_init,
        expert_lr=args.expert_lr,
        mixing_lr=args.mixing_lr,
        mixing_steps=args.mixing_steps,
        mixing_trainable=args.mixing_trainable,
        checkpoint_every=args.checkpoint_every,
        dense_baseline=not args.no_dense,
        eval_max_batches=args.eval_max_batches,
        seed=args.seed,
        device=args.device,
        progress=not args.no_progress,
    )
    started = time.perf_counter()
    result = run_pipeline(args.out, settings)
    print(result.comparison.to_text())
    print(f"pipeline finished in {time.perf_counter() - started:.1f} s -> {args.out}")
    return 0

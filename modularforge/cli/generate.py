"""The `generate` command: continue a prompt with a saved expert, mixture or pipeline run.

    python -m modularforge generate "def main(" --shared shared.safetensors --expert python.safetensors
    python -m modularforge generate "The licence" --pipeline runs/tiny --experts-per-token 2

Three sources, exactly one per call:

* `--shared FILE --expert FILE`: one expert on its trunk (a `ModuleTrainerModel`);
* `--shared FILE --expert FILE --expert FILE ... --router FILE`: a mixture whose
  routers were saved with `save_router` (their file records the experts' order);
* `--pipeline DIR`: the mixture a `pipeline` run assembled, with its trained routers.

Every file goes through the package's checked loaders, and the sampling options
through `generate`'s own validation, so a bad value fails before any text is made.
"""

from __future__ import annotations

import argparse

import torch

from modularforge.mixture.moe import SUPPORTED_TOP_K
from modularforge.training.preflight import MAX_SEED, bounded_int_argument

__all__ = ["add_generate_arguments", "load_generation_model", "run_generate"]


def add_generate_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `generate` options to `parser` and make it run `run_generate`."""
    parser.add_argument("prompt", help="the text to continue")
    source = parser.add_argument_group("model (one of: --shared with --expert, or --pipeline)")
    source.add_argument("--shared", help="a shared-trunk file (with --expert)")
    source.add_argument(
        "--expert", action="append", default=[], help="an expert file; repeat for a mixture"
    )
    source.add_argument("--router", help="a router file, for a mixture of several --expert")
    source.add_argument("--pipeline", help="a folder written by the `pipeline` command")
    source.add_argument(
        "--experts-per-token",
        type=int,
        default=1,
        choices=SUPPORTED_TOP_K,
        help="routing top-k of a mixture (default 1)",
    )
    sampling = parser.add_argument_group("sampling")
    sampling.add_argument("--max-new-tokens", type=int, default=50, help="tokens to add")
    sampling.add_argument("--greedy", action="store_true", help="always take the likeliest token")
    sampling.add_argument(
        "--temperature", type=float, default=1.0, help="any finite value > 0 (default 1)"
    )
    sampling.add_argument("--top-k", type=int, default=None, help="sample from the k likeliest")
    sampling.add_argument("--top-p", type=float, default=None, help="nucleus sampling, in (0, 1]")
    sampling.add_argument(
        "--seed",
        type=bounded_int_argument(0, MAX_SEED),
        default=0,
        help="seed of the sampling generator",
    )
    sampling.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.set_defaults(run=run_generate)


def load_generation_model(args: argparse.Namespace) -> torch.nn.Module:
    """The model the options name, loaded through the checked loaders, in eval mode."""
    from modularforge.files.checkpoint import load_expert, load_shared

    if args.pipeline is not None:
        if args.shared or args.expert or args.router:
            raise ValueError("give either --pipeline or --shared/--expert/--router, not both")
        from modularforge.pipeline.run import load_pipeline_mixture

        return load_pipeline_mixture(args.pipeline, args.experts_per_token).eval()
    if not args.shared or not args.expert:
        raise ValueError(
            "say which model to use: --shared FILE --expert FILE (one expert), add more "
            "--expert and a --router for a mixture, or --pipeline DIR"
        )
    shared = load_shared(args.shared)
    if len(args.expert) == 1:
        if args.router:
            raise ValueError("--router needs at least two --expert files (a mixture)")
        return load_expert(args.expert[0], shared).eval()
    if not args.router:
        raise ValueError(
            f"{len(args.expert)} --expert files make a mixture, which needs the --router "
            "file its routers were saved to"
        )
    from modularforge.mixture.moe import MixtureOfExperts, load_router

    models = [load_expert(path, shared) for path in args.expert]
    moe = MixtureOfExperts.from_trainer_models(models, top_k=args.experts_per_token)
    return load_router(moe, args.router).eval()


def run_generate(args: argparse.Namespace) -> int:
    """Load, encode the prompt, generate, print the prompt and its continuation."""
    from modularforge.training.data import load_tokenizer
    from modularforge.training.generate import generate_text
    from modularforge.training.train import resolve_device

    try:
        device = resolve_device(args.device)
    except RuntimeError as error:  # torch.device("bogus")
        raise ValueError(f"--device {args.device!r} is not a device ({error})") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device {args.device!r}: generation runs on cpu, cuda or mps")
    model = load_generation_model(args).to(device)
    tokenizer = load_tokenizer(model.config.vocab_size)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    text = generate_text(
        model,
        tokenizer,
        args.prompt,
        args.max_new_tokens,
        greedy=args.greedy,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        generator=generator,
    )
    print(text)
    return 0

"""Where a training step's time goes, by kind of work: matmuls, attention, norms, loss, optimizer.

The roofline says how far a step is from the machine's matmul line; this says
why. `torch.profiler` records every aten op of one step with its own (self)
CPU time; `categorise` sums those times into a few kinds a reader recognises.
The optimizer's ops are told apart from the model's by their parent
(`Optimizer.step`), since both use the same element-wise ops.

Self times on a shared machine are noisy in absolute terms; the shares within
one profiled step are what this is for.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch.profiler import ProfilerActivity, profile

#: aten op name -> category (ops not listed fall into "other element-wise and copies").
CATEGORIES = {
    "aten::mm": "matmul (Linear, LM head)",
    "aten::addmm": "matmul (Linear, LM head)",
    "aten::addmm_": "matmul (Linear, LM head)",
    "aten::bmm": "attention",
    "aten::_scaled_dot_product_flash_attention_for_cpu": "attention",
    "aten::_scaled_dot_product_flash_attention_for_cpu_backward": "attention",
    "aten::_softmax": "attention",
    "aten::_softmax_backward_data": "attention",
    "aten::native_layer_norm": "LayerNorm",
    "aten::native_layer_norm_backward": "LayerNorm",
    "aten::gelu": "GELU",
    "aten::gelu_backward": "GELU",
    "aten::bernoulli_": "dropout masks",
    "aten::native_dropout": "dropout masks",
    "aten::_log_softmax": "loss (log-softmax, NLL)",
    "aten::_log_softmax_backward_data": "loss (log-softmax, NLL)",
    "aten::nll_loss_forward": "loss (log-softmax, NLL)",
    "aten::nll_loss_backward": "loss (log-softmax, NLL)",
    "aten::embedding_dense_backward": "embedding",
    "aten::index_select": "embedding",
}
OPTIMIZER = "optimizer"
OTHER = "other element-wise and copies"


def _in_optimizer(event: Any) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("Optimizer.step"):
            return True
        parent = parent.cpu_parent
    return False


def categorise(events: list[Any]) -> dict[str, float]:
    """Seconds of self CPU time per category, over profiler `events` (aten ops only)."""
    seconds: dict[str, float] = {}
    for event in events:
        if not event.name.startswith("aten::"):
            continue
        category = OPTIMIZER if _in_optimizer(event) else CATEGORIES.get(event.name, OTHER)
        seconds[category] = seconds.get(category, 0.0) + event.self_cpu_time_total / 1e6
    return dict(sorted(seconds.items(), key=lambda item: -item[1]))


def profile_step(step: Callable[[], object]) -> dict[str, Any]:
    """Profile one call of `step`: seconds and share of the step per category."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    seconds = categorise(list(prof.events()))
    total = sum(seconds.values())
    return {
        "seconds": seconds,
        "share": {name: value / total for name, value in seconds.items()},
        "total_s": total,
    }


def profile_configuration(
    name: str, preset: str, batch_size: int, seq_len: int, threads: int, repeats: int = 3
) -> dict[str, float]:
    """Seconds per category of one bench configuration's step, the least of `repeats` profiles.

    The step is warmed up first (optimizer state, BLAS workspace); each category's
    minimum over the repeats is the figure least disturbed by other processes.
    """
    import torch

    from modularforge.measure.bench import (
        build_configuration,
        make_optimizer,
        plain_step,
        random_batch,
    )
    from modularforge.model.config import ModelConfig

    config = ModelConfig.preset(preset)
    model = build_configuration(name, config)
    optimizer, _ = make_optimizer(model)
    batch = random_batch(config, batch_size, seq_len)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        plain_step(model, batch, optimizer)
        runs = [
            profile_step(lambda: plain_step(model, batch, optimizer))["seconds"]
            for _ in range(repeats)
        ]
    finally:
        torch.set_num_threads(previous)
    kinds = {kind for run in runs for kind in run}
    best = {kind: min(run.get(kind, 0.0) for run in runs) for kind in kinds}
    return dict(sorted(best.items(), key=lambda item: -item[1]))


def main(argv: list[str] | None = None) -> int:
    """Print where one configuration's step spends its time, per thread count."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m modularforge.measure.step_profile")
    parser.add_argument("--configuration", default="expert")
    parser.add_argument("--preset", choices=["seed", "tiny"], default="seed")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    for threads in args.threads:
        best = profile_configuration(
            args.configuration, args.preset, args.batch_size, args.seq_len, threads, args.repeats
        )
        total = sum(best.values())
        print(f"{args.configuration}, {threads} thread(s): {total:.3f} s of self CPU time")
        for kind, seconds in best.items():
            print(f"  {kind:32} {seconds:8.3f} s {seconds / total:6.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""`python -m modularforge bench`: expert training against full training and a plain GPT.

The memory chapter works the bytes out; this module times and measures real
steps of five configurations in one process, on one batch shape:

* **expert**: the design -- frozen shared trunk + one trainable expert
  (`ModuleTrainerModel`, AdamW over the expert's parameters);
* **full**: the same model with nothing frozen, and *nothing else changed*:
  trunk dropout off (a frozen trunk runs in eval mode, so the expert has none)
  and attention on the fused kernel, as in the expert arm;
* **full-math**: full, with attention on the math path (one change: the path);
* **full-dropout**: full-math with the trunk's dropout on (one change: dropout).
  This is how the trainer model trains an unfrozen trunk by default on CPU,
  where attention dropout has no fused kernel and forces the math path;
* **baseline**: `PlainGPT`, the same shape written with stock PyTorch modules.

So expert vs full is the effect of freezing alone; full vs full-math the
attention path's; full-math vs full-dropout the trunk dropout's.

Steps are timed interleaved (expert, full, ..., baseline, expert, ...), so a
burst of load from another process on a shared machine hits every arm alike,
and the ratio of the minimums is the figure least disturbed by it. Memory comes
from `modularforge.measure.memory.measure_training_step` (one extra measured step each)
and FLOPs from `modularforge.measure.flops.count_flops` (one more step each), which
counts attention's matmuls on the fused kernel as on the math path.

The FLOP count also checks a claim that is easy to state and rarely verified:
autograd skips the weight-gradient matmuls of frozen layers. `flop_saving` works
out, from the config alone, how many FLOPs freezing must save; the benchmark
compares that with the difference it counts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from modularforge.files.atomic import atomic_write_bytes
from modularforge.lean.step import LeanOptions, lean_training_step, make_lean_optimizer
from modularforge.measure.flops import (
    LINEAR_OPS,
    attention_flops,
    count_flops,
    flop_saving,
    linear_flops,
)
from modularforge.measure.memory import (
    MemoryBreakdown,
    measure_training_step,
    memory_budget,
)
from modularforge.measure.peak import (
    PLAIN,
    configure_trunk,
    is_modelled,
    measure_lean_step,
    peak_budget,
)
from modularforge.measure.roofline import MatmulSuite, machine_line, utilisation
from modularforge.measure.storage_tracker import CPU_PEAK_METHOD
from modularforge.model.baseline import build_baseline
from modularforge.model.config import ModelConfig
from modularforge.model.trainer_model import seeded_trainer_model

__all__ = ["LINEAR_OPS", "count_flops", "flop_saving", "linear_flops", "run_bench"]

#: The configurations, in the order they are stepped.
CONFIGURATIONS = ("expert", "full", "full-math", "full-dropout", "baseline")
#: What a step's time is read from: wall time, or (on CPU, one thread) the process's
#: CPU time, which a busy neighbour on a shared machine does not inflate.
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
#: (frozen, attention path, trunk dropout) of each trainer-model arm: each arm
#: differs from the one before it in exactly one of the three.
ARM_SETTINGS = {
    "expert": (True, "fused", False),
    "full": (False, "fused", False),
    "full-math": (False, "math", False),
    "full-dropout": (False, "math", True),
}
LR = 1e-3  # the learning rate of every optimizer here (timing does not depend on it)
WEIGHT_DECAY = 0.01

Batch = tuple[torch.Tensor, torch.Tensor]


# --- One step ----------------------------------------------------------------------------


def plain_step(model: nn.Module, batch: Batch, optimizer: torch.optim.Optimizer) -> float:
    """Forward + cross-entropy + backward + optimizer step; returns the loss."""
    inputs, targets = batch
    model.train()
    optimizer.zero_grad(set_to_none=True)
    logits = model(inputs)
    loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.reshape(-1))
    del logits
    loss.backward()
    optimizer.step()
    return float(loss.detach())


# --- The three configurations ------------------------------------------------------------


def build_configuration(name: str, config: ModelConfig, seed: int = 0) -> nn.Module:
    """One of `CONFIGURATIONS`, initialised from `seed` (identical across runs)."""
    if name == "baseline":
        return build_baseline(config, seed)
    if name in ARM_SETTINGS:
        frozen, path, dropout = ARM_SETTINGS[name]
        model = seeded_trainer_model(config, frozen=frozen, seed=seed)
        configure_trunk(model, path, dropout)
        return model
    raise ValueError(f"unknown configuration {name!r}; choose one of {CONFIGURATIONS}")


def make_optimizer(
    model: nn.Module, fused: bool = False, lean: bool = False
) -> tuple[torch.optim.Optimizer, str]:
    """AdamW over the trainable parameters, and a short description of which kind.

    `fused=True` asks for PyTorch's fused kernel; where this build refuses it for
    the model's device, the default AdamW is used and the description says so.
    """
    parameters = [p for p in model.parameters() if p.requires_grad]
    if fused:
        try:
            return torch.optim.AdamW(
                parameters, lr=LR, weight_decay=WEIGHT_DECAY, fused=True
            ), "AdamW(fused=True)"
        except (RuntimeError, ValueError) as error:
            print(f"fused AdamW is not available here ({error}); using the default AdamW")
    if lean:
        return make_lean_optimizer(parameters, lr=LR, weight_decay=WEIGHT_DECAY), (
            "AdamW(foreach=False)"
        )
    return torch.optim.AdamW(parameters, lr=LR, weight_decay=WEIGHT_DECAY), "AdamW"


def random_batch(config: ModelConfig, batch_size: int, seq_len: int, seed: int = 0) -> Batch:
    """Uniform random token ids and their next-token targets: step cost ignores content."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, config.vocab_size, (batch_size, seq_len + 1), generator=generator)
    return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()


def _spread(times: list[float]) -> dict[str, float]:
    """Median, min, max, interquartile range and standard deviation of step times."""
    quartiles = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "iqr_s": quartiles[2] - quartiles[0],
        "stdev_s": statistics.stdev(times) if len(times) > 1 else 0.0,
    }


def machine_info(device: torch.device) -> dict[str, Any]:
    """Where the numbers came from: platform, CPU, core count, torch, device name."""
    cpu_name = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_name = line.split(":", 1)[1].strip()
                break
    return {
        "platform": platform.platform(),
        "processor": cpu_name,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name,
    }


def _memory_dict(memory: MemoryBreakdown, lean: bool) -> dict[str, int | None]:
    return {
        "params_frozen": memory.params_frozen,
        "params_trainable": memory.params_trainable,
        "grads": memory.grads,
        "optimizer_state": memory.optimizer_state,
        "activations": None if lean else memory.activations,
        "static": memory.static,
        "peak": memory.peak,
    }


def run_bench(
    config: ModelConfig,
    batch_size: int,
    seq_len: int,
    steps: int,
    device: str | torch.device = "cpu",
    warmup: int = 1,
    lean: LeanOptions | None = None,
    fused_adamw: bool = False,
    bf16: bool = False,
    seed: int = 0,
    clock: str = "wall",
) -> dict[str, Any]:
    """Time, measure and count FLOPs for expert, full and baseline training steps.

    Returns a JSON-ready dict: `results[name]` per configuration (step times and
    their spread, tokens/s, measured memory by category, analytic floor, FLOPs,
    achieved FLOP/s and its fraction of the machine's matmul line), `ratios`,
    `flop_check` (counted vs analytic FLOPs saved by freezing) and `roofline`
    (the machine's matmul throughput on the model's Linear shapes: fp32, and
    bf16 too on CUDA, one round timed after every round of steps).
    With `lean`, expert and full use `lean_training_step`; the baseline always
    takes plain steps, as a reader's own model would.

    `clock="cpu"` reads step and matmul times from the process's CPU time
    (user + system, page faults included): with one intra-op thread on a CPU,
    that is the time the step itself took, whatever else the machine runs.
    """
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {sorted(CLOCKS)}, got {clock!r}")
    if clock == "cpu" and (torch.device(device).type != "cpu" or torch.get_num_threads() != 1):
        raise ValueError(
            "clock 'cpu' sums the CPU time of every thread: it measures a step only on a "
            f"CPU with one intra-op thread (device {device}, {torch.get_num_threads()} threads); "
            "set OMP_NUM_THREADS=1 or use the wall clock"
        )
    read = CLOCKS[clock]
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be an int >= 0, got {warmup!r}")
    device = torch.device(device)
    if bf16 and device.type != "cuda":
        raise ValueError(
            f"--bf16 runs the forward under CUDA autocast and needs a CUDA device, got {device}; "
            "drop --bf16 on CPU (fp32 is what the CPU figures are about)"
        )
    memory_budget(config, batch_size, seq_len)  # validates batch_size and seq_len
    batch = tuple(t.to(device) for t in random_batch(config, batch_size, seq_len, seed))

    def autocast() -> contextlib.AbstractContextManager:
        if bf16:
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    models: dict[str, nn.Module] = {}
    optimizers: dict[str, torch.optim.Optimizer] = {}
    optimizer_kinds: dict[str, str] = {}
    uses_lean = {name: lean is not None and name != "baseline" for name in CONFIGURATIONS}
    for name in CONFIGURATIONS:
        models[name] = build_configuration(name, config, seed).to(device)
        optimizers[name], optimizer_kinds[name] = make_optimizer(
            models[name], fused=fused_adamw, lean=uses_lean[name]
        )

    def step(name: str) -> float:
        with autocast():
            if uses_lean[name]:
                return lean_training_step(models[name], batch, optimizers[name], lean)
            return plain_step(models[name], batch, optimizers[name])

    def timed(name: str) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = read()
        step(name)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return read() - start

    # The machine's line, on the matrices the steps multiply (per micro-batch when lean).
    micro = (lean.micro_batch_size or batch_size) if lean is not None else batch_size
    line_tokens = seq_len * min(micro, batch_size)
    dtypes = ("float32", "bfloat16") if device.type == "cuda" else ("float32",)
    suites = {dtype: MatmulSuite(config, line_tokens, device, dtype) for dtype in dtypes}
    line_times: dict[str, dict[tuple[str, str], list[float]]] = {d: {} for d in dtypes}

    def time_lines() -> None:
        for dtype, suite in suites.items():
            for key, seconds in suite.time_once(read).items():
                line_times[dtype].setdefault(key, []).append(seconds)

    for _ in range(warmup):
        for name in CONFIGURATIONS:
            step(name)
        for suite in suites.values():
            suite.time_once()
    times: dict[str, list[float]] = {name: [] for name in CONFIGURATIONS}
    for _ in range(steps):
        for name in CONFIGURATIONS:  # interleaved: load bursts hit every arm alike
            times[name].append(timed(name))
        time_lines()  # and the machine's line too
    lines = {
        dtype: machine_line(suites[dtype].shapes, line_tokens, line_times[dtype], dtype)
        for dtype in dtypes
    }
    reference = "bfloat16" if bf16 else "float32"
    suites.clear()  # free the line's operands before memory is measured

    results: dict[str, Any] = {}
    tokens = batch_size * seq_len
    for name in CONFIGURATIONS:
        model, optimizer = models[name], optimizers[name]
        with autocast():
            if uses_lean[name]:
                memory = measure_lean_step(model, batch, optimizer, lean)
            else:
                memory = measure_training_step(model, batch, optimizer)
        flops = count_flops(lambda name=name: step(name))
        frozen, path, dropout = ARM_SETTINGS.get(name, (False, "math", config.dropout > 0))
        settings = {"attention_path": path, "trunk_dropout": dropout}
        floor = memory_budget(config, batch_size, seq_len, frozen=frozen).static
        spread = _spread(times[name])
        total_flops = sum(flops.values())
        line = lines[reference]["flops_per_s"]
        parameters = list(model.parameters())
        results[name] = {
            "step": "lean" if uses_lean[name] else "plain",
            "attention_path": path if name in ARM_SETTINGS else "PyTorch's choice",
            "trunk_dropout": dropout,
            "optimizer": optimizer_kinds[name],
            "parameters": sum(p.numel() for p in parameters),
            "trainable_parameters": sum(p.numel() for p in parameters if p.requires_grad),
            "step_times_s": times[name],
            **spread,
            "tokens_per_s": tokens / spread["median_s"],
            "memory": _memory_dict(memory, uses_lean[name]),
            "peak_method": (
                "torch.cuda.max_memory_allocated" if device.type == "cuda" else CPU_PEAK_METHOD
            ),
            "analytic_floor": floor,
            "analytic_peak": _analytic_peak(
                config, batch_size, seq_len, frozen, settings, lean, fused_adamw
            )
            if name in ARM_SETTINGS and device.type == "cpu"
            else None,
            "peak_over_floor": memory.peak / floor,
            "flops": total_flops,
            "achieved": {
                "min": utilisation(total_flops, spread["min_s"], line),
                "median": utilisation(total_flops, spread["median_s"], line),
            },
            "linear_flops": linear_flops(flops),
            "attention_flops": attention_flops(flops),
            "flops_by_op": flops,
            "measured_loss": memory.loss,
        }

    expert, full, full_math, full_dropout, baseline = (results[n] for n in CONFIGURATIONS)
    expected = flop_saving(config, batch_size, seq_len, lean)
    counted = full["flops"] - expert["flops"]
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(device),
        "config": config.to_dict(),
        "batch_size": batch_size,
        "seq_len": seq_len,
        "steps": steps,
        "warmup": warmup,
        "seed": seed,
        "lean": None if lean is None else dataclasses.asdict(lean),
        "fused_adamw": fused_adamw,
        "bf16": bf16,
        "clock": clock,
        "batch": "uniform random token ids (step cost does not depend on content)",
        "results": results,
        "roofline": {"reference": reference, "lines": lines},
        "ratios": {
            "expert_over_full_peak": expert["memory"]["peak"] / full["memory"]["peak"],
            "expert_over_full_step_time_min": expert["min_s"] / full["min_s"],
            "expert_over_full_step_time_median": expert["median_s"] / full["median_s"],
            "expert_over_full_flops": expert["flops"] / full["flops"],
            "expert_over_full_linear_flops": expert["linear_flops"] / full["linear_flops"],
            "full_math_over_full_peak": full_math["memory"]["peak"] / full["memory"]["peak"],
            "full_dropout_over_full_math_peak": (
                full_dropout["memory"]["peak"] / full_math["memory"]["peak"]
            ),
            "full_dropout_over_full_peak": full_dropout["memory"]["peak"] / full["memory"]["peak"],
            "full_math_over_full_step_time_min": full_math["min_s"] / full["min_s"],
            "full_dropout_over_full_math_step_time_min": full_dropout["min_s"] / full_math["min_s"],
            "expert_over_baseline_tokens_per_s": expert["tokens_per_s"] / baseline["tokens_per_s"],
            "peak_over_floor": {name: results[name]["peak_over_floor"] for name in CONFIGURATIONS},
        },
        "flop_check": {
            "counted_flop_difference": counted,
            "expected": expected,
            "expected_total": sum(expected.values()),
            "matches": counted == sum(expected.values()),
            # Attention counted alike on both paths: the path changes no FLOP count.
            "paths_count_alike": full_math["flops_by_op"].get("aten.bmm", 0)
            == full["attention_flops"]
            and full_math["flops"] == full["flops"],
        },
    }


def _analytic_peak(
    config: ModelConfig,
    batch_size: int,
    seq_len: int,
    frozen: bool,
    settings: dict[str, Any],
    lean: LeanOptions | None,
    fused_adamw: bool,
) -> int | None:
    """`peak_budget`'s prediction for an arm, where it models the step (else None).

    It models torch's default AdamW on the plain step and the fused AdamW on the
    lean step with both recomputations on: the two settings the book stores.
    """
    options = PLAIN if lean is None else lean
    if not is_modelled(options) or fused_adamw == (lean is None):
        return None
    optimizer = "adamw-fused" if fused_adamw else "adamw"
    return peak_budget(config, batch_size, seq_len, frozen, options, optimizer, **settings).peak


def write_result(path: Path, result: dict[str, Any]) -> None:
    """Store a measurement as indented JSON, atomically: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(result, indent=2) + "\n").encode())
    print(f"wrote {path}")

"""Every setting checked up front, in one place, before any training.

A setting that is wrong but only used late (`eval_max_batches = 0` by the
evaluation, a NaN `aux_loss_weight` by the routers, `lr = inf` by the first
optimizer step, `--device meta` by the first `.to`) used to fail after hours of
training; worse, the pipeline had already recorded it, so a corrected rerun was
refused as "other settings". Here each value is checked for its type and range as
the settings object is built (`check_train_settings`, `check_pipeline_settings`),
and what needs the machine (the device, the memory one step takes) by `preflight`
before the first step. Nothing is written before these checks pass.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable
from typing import Any

import torch

from modularforge.model.config import ModelConfig

#: torch.manual_seed takes 64-bit seeds; the pipeline adds up to ~10^4 per phase.
MAX_SEED = 2**63 - 100_000
#: Devices training can run on.
TRAINING_DEVICE_TYPES = ("cpu", "cuda", "mps")


#: The largest --expert-idx the command line takes: far more experts than a run could train.
MAX_EXPERT_IDX = 1_000_000


def bounded_int_argument(minimum: int, maximum: int) -> Callable[[str], int]:
    """An argparse `type=` for an integer in [minimum, maximum].

    Why: an out-of-range seed reached torch as "Overflow when unpacking long long", after
    the model had loaded; argparse now names the flag and its range before anything runs.
    """

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not minimum <= value <= maximum:
            raise argparse.ArgumentTypeError(
                f"must be an integer from {minimum} to {maximum}, got {value}"
            )
        return value

    parse.__name__ = "integer"
    return parse


class SettingsError(ValueError):
    """A setting is of the wrong type or out of range; the message names it and its bounds."""


def check_int(owner: str, name: str, value: Any, minimum: int = 1, maximum: int | None = None):
    """An `int` (not a bool, not a float) in [minimum, maximum]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise SettingsError(f"{owner}.{name} must be an int, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise SettingsError(f"{owner}.{name} must be an int {bound}, got {value!r}")


def check_number(
    owner: str,
    name: str,
    value: Any,
    minimum: float = 0.0,
    maximum: float = math.inf,
    allow_minimum: bool = True,
    allow_maximum: bool = True,
) -> None:
    """A finite real number in the range (NaN and infinities are refused by name)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SettingsError(f"{owner}.{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise SettingsError(f"{owner}.{name} must be a finite number, got {value!r}")
    low_ok = value >= minimum if allow_minimum else value > minimum
    high_ok = value <= maximum if allow_maximum else value < maximum
    if not (low_ok and high_ok):
        if maximum == math.inf:
            sign = ">=" if allow_minimum else ">"
            raise SettingsError(f"{owner}.{name} must be {sign} {minimum}, got {value!r}")
        low = "[" if allow_minimum else "("
        high = "]" if allow_maximum else ")"
        raise SettingsError(
            f"{owner}.{name} must be in {low}{minimum}, {maximum}{high}, got {value!r}"
        )


def check_device(device: Any) -> torch.device | None:
    """The device to train on, refused by name if torch does not know it or cannot use it."""
    if device is None:
        return None
    if isinstance(device, torch.device):
        resolved = device
    elif isinstance(device, str) and device.strip():
        try:
            resolved = torch.device(device)
        except (RuntimeError, ValueError):
            raise SettingsError(
                f"device {device!r} is not a device name torch knows; use cpu or cuda (or cuda:N)"
            ) from None
    else:
        raise SettingsError(f"device must be a name such as 'cpu' or 'cuda', got {device!r}")
    if resolved.type not in TRAINING_DEVICE_TYPES:
        raise SettingsError(
            f"device {device!r}: models run on cpu, cuda or mps, not on {resolved.type!r} "
            "(a 'meta' tensor holds no numbers)"
        )
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise SettingsError(f"device {device!r} was requested but CUDA is not available here")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise SettingsError(
                f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise SettingsError(f"device {device!r} was requested but MPS is not available here")
    return resolved


def check_train_settings(settings: Any) -> None:
    """Every field of a `TrainSettings` (called by its `__post_init__`)."""
    owner = "TrainSettings"
    for name in ("steps", "batch_size", "seq_len", "eval_every", "eval_batches"):
        check_int(owner, name, getattr(settings, name))
    check_int(owner, "warmup_steps", settings.warmup_steps, minimum=0)
    check_number(owner, "lr", settings.lr, allow_minimum=False)
    check_number(owner, "min_lr_ratio", settings.min_lr_ratio, 0.0, 1.0)
    check_number(owner, "weight_decay", settings.weight_decay)
    check_number(owner, "grad_clip", settings.grad_clip, allow_minimum=False)
    betas = settings.betas
    if not isinstance(betas, tuple | list) or len(betas) != 2:
        raise SettingsError(f"{owner}.betas must be two numbers, got {betas!r}")
    for i, beta in enumerate(betas):
        check_number(owner, f"betas[{i}]", beta, 0.0, 1.0, allow_maximum=False)
    check_int(owner, "seed", settings.seed, minimum=0, maximum=MAX_SEED)
    for name in ("progress", "report_evals"):
        if not isinstance(getattr(settings, name), bool):
            raise SettingsError(f"{owner}.{name} must be True or False")
    check_device(settings.device)


def check_pipeline_settings(settings: Any) -> None:
    """Every field of a `PipelineSettings` (called by its `__post_init__`)."""
    owner = "PipelineSettings"
    if not isinstance(settings.preset, str):
        raise SettingsError(f"{owner}.preset must be a preset name, got {settings.preset!r}")
    config = ModelConfig.preset(settings.preset)  # refuses an unknown name
    for name in ("steps", "expert_steps", "router_steps", "batch_size"):
        check_int(owner, name, getattr(settings, name))
    check_int(owner, "mixing_steps", settings.mixing_steps, minimum=0)
    for name, allowed in getattr(settings, "CHOICES", {}).items():
        if getattr(settings, name) not in allowed:
            raise SettingsError(
                f"{owner}.{name} must be one of {', '.join(allowed)}, got {getattr(settings, name)!r}"
            )
    check_int(owner, "seq_len", settings.seq_len, maximum=config.max_seq_len)
    top_k = settings.top_k
    if not top_k or not isinstance(top_k, tuple) or any(k not in (1, 2) for k in top_k):
        raise SettingsError(f"{owner}.top_k must be a non-empty subset of (1, 2), got {top_k}")
    check_number(owner, "lr", settings.lr, allow_minimum=False)
    for name in ("router_lr", "expert_lr", "mixing_lr"):
        check_number(owner, name, getattr(settings, name), allow_minimum=False)
    check_number(owner, "aux_loss_weight", settings.aux_loss_weight)
    check_int(owner, "checkpoint_every", settings.checkpoint_every, minimum=0)
    if settings.eval_max_batches is not None:
        check_int(owner, "eval_max_batches", settings.eval_max_batches)
    check_int(owner, "seed", settings.seed, minimum=0, maximum=MAX_SEED)
    for name in ("dense_baseline", "progress"):
        if not isinstance(getattr(settings, name), bool):
            raise SettingsError(f"{owner}.{name} must be True or False")
    check_device(settings.device)


def machine_memory_bytes(device: torch.device) -> int | None:
    """Memory a training step may use at most: the GPU's, or the machine's RAM (None: unknown)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def check_step_memory(config: ModelConfig, batch_size: int, seq_len: int, device: Any) -> int:
    """Refuse a batch whose one training step cannot fit the machine; return its estimate.

    The estimate is the analytic one of `modularforge.measure.memory` for the largest step
    the pipeline takes (every parameter trained: phase 1 and the dense baseline).
    """
    from modularforge.measure.memory import memory_budget

    resolved = check_device(device) or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    need = memory_budget(config, batch_size, seq_len, frozen=False).total
    have = machine_memory_bytes(resolved)
    if have is not None and need > have:
        raise SettingsError(
            f"batch size {batch_size} x seq_len {seq_len} needs about {need / 1e9:.1f} GB for "
            f"one training step, more than this {resolved.type} has ({have / 1e9:.1f} GB); "
            "lower --batch-size"
        )
    return need


def preflight(settings: Any) -> None:
    """What the machine decides, checked before the first step of a pipeline run."""
    check_pipeline_settings(settings)
    check_step_memory(settings.config, settings.batch_size, settings.seq_len, settings.device)

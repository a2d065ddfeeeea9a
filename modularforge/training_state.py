"""Resumable training: everything a run needs to continue bit-identically after a crash.

Experts are trained for hours on machines that disappear (free GPU notebooks,
preemptible instances). A training-state checkpoint holds, besides the trained
weights, the optimizer's moments, the learning-rate schedule's position, the
random-number generators (dropout) and the data stream's position, so that a
resumed run makes exactly the steps the uninterrupted run would have made.

The format is the package's: safetensors for every tensor, JSON metadata in the
header, written atomically (temp file, fsync, rename), never pickle.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_save
from torch import nn

from .atomic import atomic_write_bytes
from .checkpoint import METADATA_KEY, CheckpointError, _read_checkpoint_header
from .data import BatchStream

TRAINING_STATE_KIND = "training-state"
TRAINING_STATE_VERSION = 1
#: Settings that may differ between the interrupted run and the resumed one.
_RESUMABLE_SETTING_CHANGES = {"progress", "device"}


def _trained_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def save_training_state(
    path: str | os.PathLike[str],
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    stream: BatchStream,
    step: int,
    settings: Any,
    history: Any,
) -> Path:
    """Write the state after `step` optimizer steps; returns the path.

    Only parameters that train are stored (for an expert run, the expert): the
    frozen trunk is the caller's to provide again, and its fingerprint is kept
    in the model's own expert checkpoints.
    """
    tensors: dict[str, torch.Tensor] = {}
    parameters = _trained_parameters(model)
    for name, parameter in parameters.items():
        tensors[f"model.{name}"] = parameter.detach()
    optimizer_state = optimizer.state_dict()
    for index, state in optimizer_state["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{key}"] = value
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for device_index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{device_index}"] = state
    stream_state = stream.state_dict()
    tensors["stream.generator"] = stream_state.pop("generator_state")
    metadata = {
        "kind": TRAINING_STATE_KIND,
        "format_version": TRAINING_STATE_VERSION,
        "step": step,
        "parameters": list(parameters),
        "optimizer_param_groups": optimizer_state["param_groups"],
        "optimizer_state_keys": {
            str(index): sorted(k for k, v in state.items() if isinstance(v, torch.Tensor))
            for index, state in optimizer_state["state"].items()
        },
        "scheduler": scheduler.state_dict(),
        "stream": stream_state,
        "settings": dataclasses.asdict(settings),
        "history": dataclasses.asdict(history),
    }
    cpu = {name: t.detach().to("cpu").contiguous().clone() for name, t in tensors.items()}
    header = {METADATA_KEY: json.dumps(metadata, sort_keys=True)}
    return atomic_write_bytes(path, safetensors_save(cpu, header))


def load_training_state(
    path: str | os.PathLike[str],
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    stream: BatchStream,
    settings: Any,
) -> tuple[int, dict[str, Any]]:
    """Restore a run saved by `save_training_state`; returns (step, history as a dict).

    Refuses, with a message naming the difference, a state saved with other
    training settings or for a model with other trainable parameters: resuming
    either would silently produce a run that matches neither.
    """
    path = Path(path)
    info = _read_checkpoint_header(path)
    meta = info["metadata"]
    if meta.get("kind") != TRAINING_STATE_KIND:
        raise CheckpointError(
            f"{path}: not a training-state checkpoint (kind {meta.get('kind')!r}); "
            "pass the file written by checkpoint_every during training"
        )
    if meta.get("format_version", 0) > TRAINING_STATE_VERSION:
        raise CheckpointError(
            f"{path}: training-state format version {meta['format_version']} is newer than "
            f"this modularforge supports ({TRAINING_STATE_VERSION}); upgrade modularforge"
        )
    saved_settings = meta["settings"]
    current = dataclasses.asdict(settings)
    changed = [
        f"{key}: checkpoint {_plain(saved_settings.get(key))}, now {_plain(current[key])}"
        for key in sorted(current)
        if key not in _RESUMABLE_SETTING_CHANGES
        and _plain(saved_settings.get(key)) != _plain(current[key])
    ]
    if changed:
        raise ValueError(f"{path}: cannot resume with different settings: " + "; ".join(changed))
    parameters = _trained_parameters(model)
    if list(parameters) != meta["parameters"]:
        raise CheckpointError(
            f"{path}: the checkpoint trains {len(meta['parameters'])} parameter tensors "
            f"({meta['parameters'][:2]}...), this model trains {len(parameters)} "
            f"({list(parameters)[:2]}...); resume with the model the run started with"
        )
    tensors = load_file(str(path))
    with torch.no_grad():
        for name, parameter in parameters.items():
            saved = tensors[f"model.{name}"]
            if saved.shape != parameter.shape:
                raise CheckpointError(
                    f"{path}: {name} has shape {tuple(saved.shape)} in the checkpoint, "
                    f"{tuple(parameter.shape)} in the model"
                )
            parameter.copy_(saved)
    device = next(model.parameters()).device
    optimizer_state = {
        "state": {
            int(index): {key: tensors[f"optimizer.{index}.{key}"].to(device) for key in keys}
            for index, keys in meta["optimizer_state_keys"].items()
        },
        "param_groups": meta["optimizer_param_groups"],
    }
    for state in optimizer_state["state"].values():
        if "step" in state:  # AdamW keeps its step counter on the CPU unless fused/capturable
            state["step"] = state["step"].cpu()
    optimizer.load_state_dict(optimizer_state)
    scheduler.load_state_dict(meta["scheduler"])
    torch.set_rng_state(tensors["rng.torch"])
    if torch.cuda.is_available():
        cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
        if cuda_states:
            torch.cuda.set_rng_state_all(cuda_states)
    stream.load_state_dict({**meta["stream"], "generator_state": tensors["stream.generator"]})
    return meta["step"], meta["history"]


def _plain(value: Any) -> Any:
    """JSON's view of a value (tuples become lists), so saved and live settings compare."""
    return json.loads(json.dumps(value))

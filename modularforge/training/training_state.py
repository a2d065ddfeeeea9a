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
from safetensors.torch import save as safetensors_save
from torch import nn

from modularforge.files.atomic import atomic_write_bytes
from modularforge.files.checkpoint_format import (
    METADATA_KEY,
    CheckpointError,
    dtype_name,
    load_checked_tensors,
    read_checkpoint_header,
)
from modularforge.training.data import BatchStream

TRAINING_STATE_KIND = "training-state"
TRAINING_STATE_VERSION = 1
#: Settings that may differ between the interrupted run and the resumed one.
_RESUMABLE_SETTING_CHANGES = {"progress", "report_evals", "device"}


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

    Everything is checked before anything is read or changed: the metadata's
    fields and types, the step (an int in [0, settings.steps] that agrees with the
    scheduler, the data stream, the optimizer and the history, so an edited step
    cannot make a run "finish" with the wrong weights), and every tensor's name,
    shape and dtype against this model and optimizer (`CheckpointError`).
    """
    path = Path(path)
    info = read_checkpoint_header(path)
    meta = info["metadata"]
    if meta.get("kind") != TRAINING_STATE_KIND:
        raise CheckpointError(
            f"{path}: not a training-state checkpoint (kind {meta.get('kind')!r}); "
            "pass the file written by checkpoint_every during training"
        )
    version = meta.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{path}: unsupported training-state format_version {version!r}")
    if version > TRAINING_STATE_VERSION:
        raise CheckpointError(
            f"{path}: training-state format version {version} is newer than "
            f"this modularforge supports ({TRAINING_STATE_VERSION}); upgrade modularforge"
        )
    _check_field_types(path, meta)
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
    _check_step(path, meta, settings)
    expected = _expected_tensors(meta, parameters, optimizer, info["tensors"])
    tensors = load_checked_tensors(path, info["tensors"], expected, "training run")
    counts = {
        n: int(t) for n, t in tensors.items() if n.startswith("optimizer.") and n.endswith(".step")
    }
    wrong = sorted(name for name, count in counts.items() if count != meta["step"])
    if wrong:
        raise CheckpointError(
            f"{path}: step {meta['step']} disagrees with the optimizer's step counter(s) "
            f"{wrong[:3]} ({counts[wrong[0]]}); the file was edited or damaged. Delete it to "
            "restart the run"
        )
    with torch.no_grad():
        for name, parameter in parameters.items():
            parameter.copy_(tensors[f"model.{name}"])
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


#: Metadata field -> the JSON type it must have.
_FIELD_TYPES = {
    "step": int,
    "parameters": list,
    "optimizer_param_groups": list,
    "optimizer_state_keys": dict,
    "scheduler": dict,
    "stream": dict,
    "settings": dict,
    "history": dict,
}


def _check_field_types(path: Path, meta: dict[str, Any]) -> None:
    """Every field present with its JSON type, named when not (instead of a KeyError)."""
    for field, kind in _FIELD_TYPES.items():
        value = meta.get(field)
        if isinstance(value, bool) or not isinstance(value, kind):
            raise CheckpointError(
                f"{path}: training-state metadata field {field!r} must be a JSON "
                f"{kind.__name__}, got {type(value).__name__}; the file is damaged, delete "
                "it to restart the run from the beginning"
            )


def _check_step(path: Path, meta: dict[str, Any], settings: Any) -> None:
    """The step is in range and every counter that advances with it agrees."""
    step = meta["step"]
    if not 0 <= step <= settings.steps:
        raise CheckpointError(
            f"{path}: step {step} is outside 0..{settings.steps} (the run's steps); the "
            "file was edited or belongs to another run"
        )
    counters = {
        "scheduler last_epoch": meta["scheduler"].get("last_epoch"),
        "stream batches_drawn": meta["stream"].get("batches_drawn"),
        "history length": len(meta["history"].get("steps") or []),
    }
    disagree = [f"{name} {value!r}" for name, value in counters.items() if value != step]
    if disagree:
        raise CheckpointError(
            f"{path}: step {step} disagrees with {', '.join(disagree)}; the file was edited "
            "or damaged. Delete it to restart the run"
        )


def _expected_tensors(
    meta: dict[str, Any],
    parameters: dict[str, nn.Parameter],
    optimizer: torch.optim.Optimizer,
    specs: dict[str, Any],
) -> dict[str, Any]:
    """Names, shapes and dtypes the file must hold for this model and optimizer."""
    expected: dict[str, Any] = {f"model.{n}": p for n, p in parameters.items()}
    by_index = [p for group in optimizer.param_groups for p in group["params"]]
    for index, keys in meta["optimizer_state_keys"].items():
        position = int(index) if str(index).isdigit() else -1
        parameter = by_index[position] if 0 <= position < len(by_index) else None
        for key in keys if isinstance(keys, list) else []:
            if key == "step" or parameter is None:
                shape, dtype = [], "F32"
            else:
                shape, dtype = list(parameter.shape), dtype_name(parameter.dtype)
            expected[f"optimizer.{index}.{key}"] = {"shape": shape, "dtype": dtype}
    rng = {"shape": list(torch.get_rng_state().shape), "dtype": "U8"}
    expected["rng.torch"] = rng
    expected["stream.generator"] = rng
    for name in specs:  # CUDA generator states: one per device that saved one
        if name.startswith("rng.cuda."):
            expected[name] = {"shape": specs[name]["shape"], "dtype": "U8"}
    return expected


def _plain(value: Any) -> Any:
    """JSON's view of a value (tuples become lists), so saved and live settings compare."""
    return json.loads(json.dumps(value))

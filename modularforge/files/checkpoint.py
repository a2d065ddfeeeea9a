"""Expert and shared-trunk files: safetensors weights plus JSON metadata, checked on load.

Why safetensors and never pickle: `torch.load` on a pickle-based file runs
whatever code the file's author put in it, so loading an expert downloaded from a
colleague or the internet would be as dangerous as running their script. A
safetensors file is an 8-byte header length, a JSON header and raw tensor bytes;
reading it executes nothing. This module therefore never calls `torch.load` or
`pickle`, and it checks that a file *looks like* safetensors before handing it to
the safetensors parser, so that a pickle renamed to `.safetensors` is refused with a
clear message.

Why so many checks on load: an expert only makes sense together with the exact
shared trunk it was trained against. Loading it next to other shared weights, or
into a model of another shape, would not crash; it would just produce garbage
text. So the metadata records the config fields the expert depends on and a
SHA-256 fingerprint of the shared trunk (its weights and its whole config: a
changed `n_heads` or `layer_norm_eps` changes what the trunk computes just as a
changed weight does), and loading compares both before any weight is copied. Every problem is reported by name (field, tensor) instead of as a
shape error from deep inside `load_state_dict`.

Why sizes come from the tensors, not the metadata: the metadata is a JSON
string anyone can edit. A shared file whose metadata claims `n_layers = 10**6`
must not make the loader build a million layers. So every size that the tensors
show (vocabulary, width, layer count, FFN width) is read from the header's tensor
shapes and compared with the metadata, field by field, before anything is built;
the sizes the tensors cannot show (`max_seq_len`, and `d_ff` for a trunk) are
bounded by the weights the file actually holds. Loading therefore never allocates
much more than the file's own size. The container itself is read in
`modularforge.files.checkpoint_format`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as safetensors_save
from torch import nn

from modularforge.files.arguments import check_trainer_model, check_trunk, checked_path
from modularforge.files.atomic import atomic_write_bytes
from modularforge.files.checkpoint_format import (
    METADATA_KEY,
    CheckpointConfigError,
    CheckpointError,
    SharedMismatchError,
    check_tensor_specs,
    dtype_name,
    load_checked_tensors,
    numel,
    read_checkpoint_header,
)
from modularforge.model.config import ModelConfig
from modularforge.model.expert import build_expert
from modularforge.model.shared import SharedComponents
from modularforge.model.trainer_model import ModuleTrainerModel

__all__ = [
    "EXPERT_CONFIG_FIELDS",
    "FINGERPRINT_CONFIG_FIELDS",
    "FORMAT_VERSION",
    "METADATA_KEY",
    "UNSEEN_SIZE_FACTOR",
    "CheckpointConfigError",
    "CheckpointError",
    "SharedMismatchError",
    "check_format_version",
    "expert_fingerprint",
    "load_expert",
    "load_shared",
    "read_metadata",
    "save_expert",
    "save_shared",
    "shared_fingerprint",
    "trunk_fingerprint",
]

#: Version of the metadata layout written here. Version 2: the trunk fingerprint
#: covers the config as well as the weights. Older files are refused (their
#: fingerprint cannot vouch for the config), newer ones too.
FORMAT_VERSION = 2
#: The config fields an expert's weights depend on (the design's list). They are
#: checked against the shared trunk's config when an expert is loaded.
EXPERT_CONFIG_FIELDS = ("d_model", "d_ff", "n_layers", "expert_dropout")
#: The config fields the trunk fingerprint covers: all of them. Every one changes
#: what the trunk computes (n_heads, layer_norm_eps, max_seq_len, dropout) or what
#: is built on it (d_ff, expert_dropout), and none can be read from the weights.
FINGERPRINT_CONFIG_FIELDS = tuple(ModelConfig().to_dict())
#: Sizes the tensors cannot show (the positions table, max_seq_len x d_model, and
#: one expert built on a trunk, from d_ff) may each be at most this many times the
#: parameters the file holds; real configs are below 2x, a forged one is refused.
UNSEEN_SIZE_FACTOR = 16

#: Metadata fields each kind of file must carry.
_REQUIRED_FIELDS = {
    "expert": ("kind", "format_version", "expert_idx", "config", "shared_fingerprint"),
    "shared": ("kind", "format_version", "config", "shared_fingerprint"),
}
_LAYER_NAME = re.compile(r"^attention\.(\d+)\.")

# Re-exported for modules that read checkpoints of their own kinds (routers, training states).
_read_checkpoint_header = read_checkpoint_header
_load_checked_tensors = load_checked_tensors


# --------------------------------------------------------------------------- fingerprints


def trunk_fingerprint(config: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 (hex) of a trunk's config (every field) and its weights.

    Computed from plain data, so a loader can verify a file before building any
    module from it. The config part is the JSON of `FINGERPRINT_CONFIG_FIELDS`
    in a fixed order; then each tensor, in sorted name order, contributes its
    name, dtype, shape and raw bytes (copied to the CPU first, so equal weights
    give the same fingerprint on any device; a cast to bf16 is a different
    fingerprint, because the expert would see different numbers).
    """
    digest = hashlib.sha256()
    config_part = {field: config.get(field) for field in FINGERPRINT_CONFIG_FIELDS}
    digest.update(b"modularforge-trunk-v2\0")
    digest.update(json.dumps(config_part, sort_keys=True).encode("utf-8") + b"\0")
    _hash_tensors(digest, tensors)
    return digest.hexdigest()


def shared_fingerprint(shared: SharedComponents) -> str:
    """The fingerprint of a live trunk: its config and every `state_dict()` entry.

    The positions are not in `state_dict()` (they are rebuilt from the config), but
    `max_seq_len` and `d_model`, which decide them, are in the config part.
    """
    return trunk_fingerprint(shared.config.to_dict(), shared.state_dict())


def expert_fingerprint(experts: nn.ModuleList) -> str:
    """SHA-256 (hex) of one expert's weights: which expert a router was trained with."""
    digest = hashlib.sha256(b"modularforge-expert-v2\0")
    _hash_tensors(digest, experts.state_dict())
    return digest.hexdigest()


def _hash_tensors(digest: Any, tensors: Mapping[str, torch.Tensor]) -> None:
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu").contiguous()
        header = f"{name}\0{dtype_name(tensor.dtype)}\0{list(tensor.shape)}\0"
        digest.update(header.encode("utf-8"))
        # A uint8 view reads the bytes of any dtype (numpy has no bfloat16).
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())


# --------------------------------------------------------------------------- saving


def save_expert(model: ModuleTrainerModel, path: str | os.PathLike[str]) -> Path:
    """Write `model.experts` alone (no shared weights) to `path`; return the path.

    The file holds keys like `experts.0.fc1.weight` and metadata naming the expert
    index, the config fields the expert depends on, the full config (for `info`),
    the fingerprint of the shared trunk it was trained against and its own.
    """
    check_trainer_model(model)
    path = checked_path(path)
    tensors = {f"experts.{name}": t for name, t in model.experts.state_dict().items()}
    metadata = {
        "kind": "expert",
        "format_version": FORMAT_VERSION,
        "expert_idx": model.expert_idx,
        "config": {field: getattr(model.config, field) for field in EXPERT_CONFIG_FIELDS},
        "full_config": model.config.to_dict(),
        "shared_fingerprint": shared_fingerprint(model.shared),
        "expert_fingerprint": expert_fingerprint(model.experts),
        "n_parameters": sum(t.numel() for t in tensors.values()),
        "modularforge_version": _package_version(),
    }
    return _write_checkpoint(path, tensors, metadata)


def save_shared(shared: SharedComponents, path: str | os.PathLike[str]) -> Path:
    """Write the shared trunk to `path`; return the path.

    The LM head has no weight of its own (it is `token_embedding.weight`, used via
    `F.linear`), so `state_dict()` names the tied matrix once and it is stored once.
    The positions buffer is non-persistent: rebuilt from the config, never saved.
    The full config goes into the metadata so `load_shared` can rebuild the module.
    """
    tensors = dict(shared.state_dict())
    metadata = {
        "kind": "shared",
        "format_version": FORMAT_VERSION,
        "config": shared.config.to_dict(),
        "shared_fingerprint": shared_fingerprint(shared),
        "n_parameters": sum(t.numel() for t in tensors.values()),
        "modularforge_version": _package_version(),
    }
    return _write_checkpoint(path, tensors, metadata)


def _write_checkpoint(
    path: str | os.PathLike[str], tensors: dict[str, torch.Tensor], metadata: dict[str, Any]
) -> Path:
    """Serialize to bytes in memory, then write atomically (never a half-written file).

    Each tensor is cloned to the CPU: safetensors refuses tensors that share
    storage or are non-contiguous views, and a private copy cannot change while it
    is being serialized.
    """
    cpu_tensors = {name: t.detach().to("cpu").contiguous().clone() for name, t in tensors.items()}
    header = {METADATA_KEY: json.dumps(metadata, sort_keys=True)}
    return atomic_write_bytes(checked_path(path), safetensors_save(cpu_tensors, header))


# --------------------------------------------------------------------------- loading


def load_expert(
    path: str | os.PathLike[str],
    shared: SharedComponents,
    *,
    allow_shared_mismatch: bool = False,
) -> ModuleTrainerModel:
    """Rebuild `ModuleTrainerModel(shared, shared.config, expert_idx)` from an expert file.

    Checks, in order, before any weight is copied: `path` is a path and `shared` a
    `SharedComponents` (`TypeError` naming the argument); the file is a regular file and
    a modularforge checkpoint of kind "expert" and the current format version;
    each config field in `EXPERT_CONFIG_FIELDS` equals `shared.config`'s (`CheckpointConfigError`); the
    shared fingerprint matches `shared` (`SharedMismatchError`, or only a
    `UserWarning` with `allow_shared_mismatch=True`); the tensors have exactly the
    expected names, shapes and dtypes (checked before the expert is built) and
    hold no NaN/inf (`CheckpointError`). The expert is placed on `shared`'s device.
    """
    path = checked_path(path)
    check_trunk(shared)
    info = read_checkpoint_header(path)
    meta = _check_metadata(path, info["metadata"], "expert")
    _check_expert_config(path, meta["config"], shared.config)
    _check_fingerprint(path, meta["shared_fingerprint"], shared, allow_shared_mismatch)
    expert_idx = meta["expert_idx"]
    if isinstance(expert_idx, bool) or not isinstance(expert_idx, int) or expert_idx < 0:
        raise CheckpointError(
            f"{path}: metadata expert_idx must be an int >= 0, got {expert_idx!r}"
        )
    expected = expected_specs(shared.config, "expert")
    check_tensor_specs(path, info["tensors"], expected)
    tensors = load_checked_tensors(path, info["tensors"], expected)
    model = ModuleTrainerModel(shared, shared.config, expert_idx)
    model.experts.load_state_dict(
        {name.removeprefix("experts."): t for name, t in tensors.items()}, strict=True
    )
    model.experts.to(_device_of(shared))
    return model


def load_shared(path: str | os.PathLike[str], *, freeze: bool = True) -> SharedComponents:
    """Rebuild the shared trunk from a file written by `save_shared`.

    Nothing is built until the file has been verified from its header and bytes:
    the sizes the tensors show must equal the metadata's config (named field by
    field), the sizes they cannot show are bounded (`UNSEEN_SIZE_FACTOR`), the
    tensors must be exactly the trunk's, and the stored fingerprint must equal
    the one recomputed from the config and the tensors read, so an edited
    `n_heads` or `layer_norm_eps` is refused like an edited weight.

    Returned frozen by default: a saved trunk is loaded to train experts against
    it or to run inference, and in both cases it must not change, because every
    expert's file records the fingerprint of exactly these weights; one stray
    optimizer step would silently invalidate all of them. Pass `freeze=False` to
    continue phase-1 (full) training.
    """
    path = checked_path(path)
    info = read_checkpoint_header(path)
    meta = _check_metadata(path, info["metadata"], "shared")
    _check_shape_fields(path, _fields_from_shapes(path, info["tensors"]), meta["config"])
    try:
        config = ModelConfig.from_dict(meta["config"])
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: metadata holds an invalid config: {error}") from error
    _check_unseen_sizes(path, config, info["tensors"])
    tensors = load_checked_tensors(path, info["tensors"], expected_specs(config, "shared"))
    actual = trunk_fingerprint(config.to_dict(), tensors)
    if meta["shared_fingerprint"] != actual:
        raise CheckpointError(
            f"{path}: the stored shared_fingerprint {str(meta['shared_fingerprint'])[:12]}... "
            f"does not match this file's config and weights ({actual[:12]}...): the file was "
            "changed after it was saved (an edited config field such as n_heads or "
            "layer_norm_eps, or edited weights). Use the file as it was saved, or retrain"
        )
    shared = SharedComponents(config)
    shared.load_state_dict(tensors, strict=True)
    return shared.freeze() if freeze else shared


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Describe a checkpoint of either kind without loading its weights (for `info`).

    Returns `{"path", "file_size", "header_size", "metadata", "tensors",
    "n_parameters"}`, where `metadata` is the parsed modularforge JSON and
    `tensors` maps each name to `{"dtype", "shape"}`. Only the header is read.
    """
    path = Path(path)
    info = read_checkpoint_header(path)
    return {
        "path": str(path),
        "file_size": info["file_size"],
        "header_size": info["header_size"],
        "metadata": info["metadata"],
        "tensors": info["tensors"],
        "n_parameters": sum(numel(spec["shape"]) for spec in info["tensors"].values()),
    }


# --------------------------------------------------------------------------- sizes from shapes


def expected_specs(config: ModelConfig, kind: str) -> dict[str, dict[str, Any]]:
    """Name -> {"dtype", "shape"} of every tensor a file of `kind` must hold for `config`.

    Worked out on PyTorch's `meta` device (shapes without storage) from a ONE-layer
    model, whose per-layer entries are then repeated for each layer: no memory is
    allocated, and a forged layer count costs a dict entry per tensor, not a module.
    """
    one_layer = config.replace(n_layers=1)
    with torch.device("meta"):
        if kind == "shared":
            state, prefix, out = SharedComponents(one_layer).state_dict(), "attention.", ""
        else:
            state, prefix, out = build_expert(one_layer).state_dict(), "", "experts."
    specs: dict[str, dict[str, Any]] = {}
    for name, tensor in state.items():
        spec = {"shape": list(tensor.shape), "dtype": dtype_name(tensor.dtype)}
        if name.startswith(f"{prefix}0."):
            rest = name.removeprefix(f"{prefix}0.")
            for layer in range(config.n_layers):
                specs[f"{out}{prefix}{layer}.{rest}"] = spec
        else:
            specs[f"{out}{name}"] = spec
    return specs


def _fields_from_shapes(path: Path, specs: dict[str, Any]) -> dict[str, int]:
    """The config sizes a trunk file's tensors show: vocab_size, d_model and n_layers.

    Layer indices of the `attention.<i>.*` tensors must run 0..n-1 without gaps.
    """
    layers = set()
    for name in specs:
        match = _LAYER_NAME.match(name)
        if match:
            layers.add(int(match.group(1)))
    if not layers:
        raise CheckpointError(f"{path}: the file holds no attention.<layer>.* tensors")
    if layers != set(range(len(layers))):
        gaps = sorted(set(range(max(layers) + 1)) - layers)[:5]
        raise CheckpointError(
            f"{path}: attention layer tensors are not numbered 0..{len(layers) - 1} "
            f"(missing layer(s) {gaps}, highest {max(layers)})"
        )
    shape = specs.get("token_embedding.weight", {}).get("shape")
    if not shape or len(shape) != 2:
        raise CheckpointError(
            f"{path}: tensor 'token_embedding.weight' is missing or not a matrix ({shape})"
        )
    return {"n_layers": len(layers), "vocab_size": shape[0], "d_model": shape[1]}


def _check_shape_fields(path: Path, derived: dict[str, int], config: dict[str, Any]) -> None:
    """The metadata's config must state exactly the sizes the tensors have, field by field."""
    mismatches = [
        f"{field}: metadata says {config.get(field)!r}, the tensors have {value}"
        for field, value in derived.items()
        if field in config and config[field] != value
    ]
    if mismatches:
        raise CheckpointError(
            f"{path}: the metadata's config does not match the tensors in the file "
            f"({'; '.join(mismatches)}); the metadata was edited or belongs to another file. "
            "Refused before building anything"
        )


def _check_unseen_sizes(path: Path, config: ModelConfig, specs: dict[str, Any]) -> None:
    """Bound what the config builds beyond the file's tensors: positions and an expert."""
    held = sum(numel(spec["shape"]) for spec in specs.values())
    limit = UNSEEN_SIZE_FACTOR * held
    unseen = {
        "max_seq_len": config.max_seq_len * config.d_model,
        "d_ff": config.n_layers * 2 * config.d_model * config.d_ff,
    }
    for field, size in unseen.items():
        if size > limit:
            raise CheckpointConfigError(
                f"{path}: metadata {field}={getattr(config, field)} would make the model "
                f"build {size:,} numbers that are not in the file, more than "
                f"{UNSEEN_SIZE_FACTOR}x the {held:,} parameters it holds; the metadata was "
                "edited. Refused before allocating anything"
            )


# --------------------------------------------------------------------------- checks


def check_format_version(path: Path, version: Any, what: str = "checkpoint") -> None:
    """Refuse anything but the current format version, saying what to do."""
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{path}: unsupported {what} format_version {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} uses {what} format_version {version}, but this modularforge "
            f"reads up to version {FORMAT_VERSION}; upgrade modularforge to load it"
        )
    if version < FORMAT_VERSION:
        raise CheckpointError(
            f"{path} uses the old {what} format_version {version}; this modularforge reads "
            f"version {FORMAT_VERSION}, whose trunk fingerprint also covers the config "
            "(version 1 covered the weights only, so it cannot vouch for n_heads or "
            "layer_norm_eps). Retrain it (a `pipeline` run retrains the files it cannot "
            "load), or re-save the model from memory with this modularforge's save functions"
        )


def _check_metadata(path: Path, meta: dict[str, Any], kind: str) -> dict[str, Any]:
    """Kind, format version and required fields, in that order."""
    found_kind = meta.get("kind")
    if found_kind != kind:
        loader = {"expert": "load_expert", "shared": "load_shared"}.get(found_kind)
        hint = f"; use {loader}" if loader else ""
        raise CheckpointError(
            f"{path}: expected a checkpoint of kind {kind!r}, but its metadata says "
            f"kind={found_kind!r}{hint}"
        )
    check_format_version(path, meta.get("format_version"))
    missing = [field for field in _REQUIRED_FIELDS[kind] if field not in meta]
    if missing:
        raise CheckpointError(f"{path}: metadata is missing required field(s) {missing}")
    if not isinstance(meta["config"], dict):
        raise CheckpointError(f"{path}: metadata config must be a JSON object")
    return meta


def _check_expert_config(path: Path, saved: dict[str, Any], config: ModelConfig) -> None:
    """Every differing field is reported at once, with both values."""
    missing = [field for field in EXPERT_CONFIG_FIELDS if field not in saved]
    if missing:
        raise CheckpointError(f"{path}: metadata config is missing field(s) {missing}")
    mismatches = [
        f"{field}: checkpoint {saved[field]!r}, model {getattr(config, field)!r}"
        for field in EXPERT_CONFIG_FIELDS
        if saved[field] != getattr(config, field)
    ]
    if mismatches:
        raise CheckpointConfigError(
            f"{path}: the expert was trained with a different config than the shared "
            f"components given: {'; '.join(mismatches)}"
        )


def _check_fingerprint(
    path: Path, saved: Any, shared: SharedComponents, allow_mismatch: bool
) -> None:
    actual = shared_fingerprint(shared)
    if saved == actual:
        return
    message = (
        f"{path}: the expert was trained against different shared weights or a "
        f"different trunk config (fingerprint {str(saved)[:12]}..., this trunk is "
        f"{actual[:12]}...). Its FFNs expect the "
        "attention outputs of that other trunk, so its predictions here would be "
        "meaningless. Load the shared file it was trained with"
    )
    if not allow_mismatch:
        raise SharedMismatchError(f"{message}, or pass allow_shared_mismatch=True to force it.")
    warnings.warn(f"{message}; loading anyway (allow_shared_mismatch=True).", stacklevel=3)


# --------------------------------------------------------------------------- helpers


def _device_of(module: torch.nn.Module) -> torch.device:
    parameter = next(module.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _package_version() -> str:
    """Imported lazily: `modularforge/__init__.py` may import this module before it sets it."""
    try:
        from modularforge import __version__
    except ImportError:
        return "unknown"
    return __version__

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
SHA-256 fingerprint of the shared weights, and loading compares both before any
weight is copied. Every problem is reported by name (field, tensor) instead of as a
shape error from deep inside `load_state_dict`.

File layout (both kinds): the safetensors header's `__metadata__` holds one key,
`"modularforge"`, whose value is a JSON object with at least `kind` ("expert" or
"shared") and `format_version`.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_save

from .atomic import atomic_write_bytes
from .config import ModelConfig
from .shared import SharedComponents
from .trainer_model import ModuleTrainerModel

__all__ = [
    "EXPERT_CONFIG_FIELDS",
    "FORMAT_VERSION",
    "METADATA_KEY",
    "CheckpointConfigError",
    "CheckpointError",
    "SharedMismatchError",
    "load_expert",
    "load_shared",
    "read_metadata",
    "save_expert",
    "save_shared",
    "shared_fingerprint",
]

#: Version of the metadata layout written here; loaders refuse anything newer.
FORMAT_VERSION = 1
#: The one `__metadata__` key this package uses; its value is a JSON string.
METADATA_KEY = "modularforge"
#: The config fields an expert's weights depend on (the design's list). They are
#: checked against the shared trunk's config when an expert is loaded.
EXPERT_CONFIG_FIELDS = ("d_model", "d_ff", "n_layers", "expert_dropout")

#: Metadata fields each kind of file must carry.
_REQUIRED_FIELDS = {
    "expert": ("kind", "format_version", "expert_idx", "config", "shared_fingerprint"),
    "shared": ("kind", "format_version", "config", "shared_fingerprint"),
}
#: safetensors refuses headers above 100 MB; a bigger claimed length means "not safetensors".
_MAX_HEADER_BYTES = 100_000_000
#: torch dtype -> the dtype name safetensors writes in its header.
_SAFETENSORS_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


class CheckpointError(ValueError):
    """The file is not a valid modularforge checkpoint, or does not fit the model."""


class CheckpointConfigError(CheckpointError):
    """The checkpoint was written for a model with a different config."""


class SharedMismatchError(CheckpointError):
    """The expert was trained against different shared weights than the ones given."""


# --------------------------------------------------------------------------- fingerprint


def shared_fingerprint(shared: SharedComponents) -> str:
    """SHA-256 (hex) of the shared trunk's weights: what an expert was trained against.

    Covers every entry of `state_dict()` (so not the positions, which are rebuilt
    from the config), in sorted key order, hashing each name, dtype, shape and the
    raw bytes. Tensors are copied to the CPU first, so equal weights give the same
    fingerprint on any device; a different dtype (say, the trunk cast to bf16) is a
    different fingerprint, because the expert would see different numbers.
    """
    digest = hashlib.sha256()
    state = shared.state_dict()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        header = f"{name}\0{_dtype_name(tensor.dtype)}\0{list(tensor.shape)}\0"
        digest.update(header.encode("utf-8"))
        # A uint8 view reads the bytes of any dtype (numpy has no bfloat16).
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


# --------------------------------------------------------------------------- saving


def save_expert(model: ModuleTrainerModel, path: str | os.PathLike[str]) -> Path:
    """Write `model.experts` alone (no shared weights) to `path`; return the path.

    The file holds keys like `experts.0.fc1.weight` and metadata naming the expert
    index, the config fields the expert depends on, the full config (for `info`)
    and the fingerprint of the shared weights it was trained against.
    """
    tensors = {f"experts.{name}": t for name, t in model.experts.state_dict().items()}
    metadata = {
        "kind": "expert",
        "format_version": FORMAT_VERSION,
        "expert_idx": model.expert_idx,
        "config": {field: getattr(model.config, field) for field in EXPERT_CONFIG_FIELDS},
        "full_config": model.config.to_dict(),
        "shared_fingerprint": shared_fingerprint(model.shared),
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
    return atomic_write_bytes(path, safetensors_save(cpu_tensors, header))


# --------------------------------------------------------------------------- loading


def load_expert(
    path: str | os.PathLike[str],
    shared: SharedComponents,
    *,
    allow_shared_mismatch: bool = False,
) -> ModuleTrainerModel:
    """Rebuild `ModuleTrainerModel(shared, shared.config, expert_idx)` from an expert file.

    Checks, in order, before any weight is copied: the file is a modularforge
    checkpoint of kind "expert" and a supported format version; each config field
    in `EXPERT_CONFIG_FIELDS` equals `shared.config`'s (`CheckpointConfigError`);
    the shared fingerprint matches `shared` (`SharedMismatchError`, or only a
    `UserWarning` with `allow_shared_mismatch=True`); the tensors have exactly the
    expected names, shapes and dtypes and hold no NaN/inf (`CheckpointError`).
    The expert is placed on the device of `shared`.
    """
    path = Path(path)
    info = _read_checkpoint_header(path)
    meta = _check_metadata(path, info["metadata"], "expert")
    _check_expert_config(path, meta["config"], shared.config)
    _check_fingerprint(path, meta["shared_fingerprint"], shared, allow_shared_mismatch)
    expert_idx = meta["expert_idx"]
    if isinstance(expert_idx, bool) or not isinstance(expert_idx, int) or expert_idx < 0:
        raise CheckpointError(
            f"{path}: metadata expert_idx must be an int >= 0, got {expert_idx!r}"
        )
    model = ModuleTrainerModel(shared, shared.config, expert_idx)
    expected = {f"experts.{name}": t for name, t in model.experts.state_dict().items()}
    tensors = _load_checked_tensors(path, info["tensors"], expected)
    model.experts.load_state_dict(
        {name.removeprefix("experts."): t for name, t in tensors.items()}, strict=True
    )
    model.experts.to(_device_of(shared))
    return model


def load_shared(path: str | os.PathLike[str], *, freeze: bool = True) -> SharedComponents:
    """Rebuild the shared trunk from a file written by `save_shared`.

    Returned frozen by default: a saved trunk is loaded to train experts against
    it or to run inference, and in both cases it must not change, because every
    expert's file records the fingerprint of exactly these weights; one stray
    optimizer step would silently invalidate all of them. Pass `freeze=False` to
    continue phase-1 (full) training.
    """
    path = Path(path)
    info = _read_checkpoint_header(path)
    meta = _check_metadata(path, info["metadata"], "shared")
    try:
        config = ModelConfig.from_dict(meta["config"])
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: metadata holds an invalid config: {error}") from error
    shared = SharedComponents(config)
    tensors = _load_checked_tensors(path, info["tensors"], shared.state_dict())
    shared.load_state_dict(tensors, strict=True)
    return shared.freeze() if freeze else shared


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Describe a checkpoint of either kind without loading its weights (for `info`).

    Returns `{"path", "file_size", "header_size", "metadata", "tensors",
    "n_parameters"}`, where `metadata` is the parsed modularforge JSON and
    `tensors` maps each name to `{"dtype", "shape"}`. Only the header is read.
    """
    path = Path(path)
    info = _read_checkpoint_header(path)
    return {
        "path": str(path),
        "file_size": info["file_size"],
        "header_size": info["header_size"],
        "metadata": info["metadata"],
        "tensors": info["tensors"],
        "n_parameters": sum(_numel(spec["shape"]) for spec in info["tensors"].values()),
    }


# --------------------------------------------------------------------------- file format


def _read_checkpoint_header(path: Path) -> dict[str, Any]:
    """Read and validate the safetensors header by hand, without the safetensors parser.

    Doing it ourselves lets every failure say what is wrong (truncated, not
    safetensors, not ours) and guarantees a pickle is recognised as "not
    safetensors" from its first bytes, long before anything could interpret it.
    """
    _check_is_file(path)
    file_size = path.stat().st_size
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            detail = "the file is empty (0 bytes)" if not prefix else f"only {len(prefix)} bytes"
            raise _invalid(path, f"{detail}, too short for a safetensors header (truncated?)")
        header_size = int.from_bytes(prefix, "little")
        if header_size > file_size - 8 or header_size > _MAX_HEADER_BYTES:
            raise _invalid(
                path,
                f"the first 8 bytes announce a {header_size}-byte header but only "
                f"{file_size - 8} bytes follow (the file is truncated, or not safetensors: "
                f"pickle and torch.save files are refused, never unpickled)",
            )
        header_bytes = handle.read(header_size)
    header = _parse_header_json(path, header_bytes)
    raw_metadata = header.pop("__metadata__", None)
    tensors = _tensor_specs(path, header, data_size=file_size - 8 - header_size)
    return {
        "file_size": file_size,
        "header_size": header_size,
        "metadata": _parse_metadata(path, raw_metadata),
        "tensors": tensors,
    }


def _check_is_file(path: Path) -> None:
    """Name the path in the error; `open` would raise the right type anyway."""
    if not path.exists():
        raise FileNotFoundError(errno.ENOENT, "checkpoint file does not exist", str(path))
    if path.is_dir():
        raise IsADirectoryError(
            errno.EISDIR, "checkpoint path is a directory, not a file", str(path)
        )
    if not os.access(path, os.R_OK):
        raise PermissionError(
            errno.EACCES, "checkpoint file is not readable (permission denied)", str(path)
        )


def _parse_header_json(path: Path, header_bytes: bytes) -> dict[str, Any]:
    if not header_bytes.startswith(b"{"):
        raise _invalid(path, "the header does not start with '{' (not a safetensors file)")
    try:
        header = json.loads(header_bytes.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise _invalid(path, f"the header is not valid JSON ({error})") from error
    if not isinstance(header, dict):
        raise _invalid(path, "the header is not a JSON object")
    return header


def _tensor_specs(path: Path, header: dict[str, Any], data_size: int) -> dict[str, Any]:
    """Tensor name -> {"dtype", "shape"}; also checks the data section is complete."""
    specs: dict[str, Any] = {}
    data_end = 0
    for name, entry in header.items():
        try:
            dtype, shape, (start, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
            if not (isinstance(start, int) and isinstance(end, int) and 0 <= start <= end):
                raise ValueError(f"bad data_offsets {entry['data_offsets']!r}")
            specs[name] = {"dtype": str(dtype), "shape": [int(size) for size in shape]}
        except (KeyError, TypeError, ValueError) as error:
            raise _invalid(
                path, f"header entry for tensor {name!r} is malformed ({error})"
            ) from None
        data_end = max(data_end, end)
    if data_size < data_end:
        raise _invalid(
            path,
            f"the data section is {data_size} bytes but the header describes {data_end} "
            "(the file is truncated)",
        )
    if data_size > data_end:
        raise _invalid(path, f"{data_size - data_end} unexpected bytes after the tensor data")
    return dict(sorted(specs.items()))


def _parse_metadata(path: Path, raw_metadata: Any) -> dict[str, Any]:
    if not isinstance(raw_metadata, dict) or METADATA_KEY not in raw_metadata:
        raise _invalid(
            path, f"it is a safetensors file, but its metadata has no {METADATA_KEY!r} entry"
        )
    try:
        metadata = json.loads(raw_metadata[METADATA_KEY])
    except (TypeError, json.JSONDecodeError) as error:
        raise _invalid(path, f"the {METADATA_KEY!r} metadata is not valid JSON ({error})") from None
    if not isinstance(metadata, dict):
        raise _invalid(path, f"the {METADATA_KEY!r} metadata is not a JSON object")
    return metadata


def _invalid(path: Path, reason: str) -> CheckpointError:
    return CheckpointError(f"{path} is not a valid modularforge checkpoint: {reason}")


# --------------------------------------------------------------------------- checks


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
    version = meta.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{path}: unsupported format_version {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} uses checkpoint format_version {version}, but this modularforge "
            f"reads up to version {FORMAT_VERSION}; upgrade modularforge to load it"
        )
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
        f"{path}: the expert was trained against different shared weights "
        f"(fingerprint {str(saved)[:12]}..., these shared weights are {actual[:12]}...). "
        "Its FFNs expect the attention outputs of that other trunk, so its predictions "
        "here would be meaningless. Load the shared file it was trained with"
    )
    if not allow_mismatch:
        raise SharedMismatchError(f"{message}, or pass allow_shared_mismatch=True to force it.")
    warnings.warn(f"{message}; loading anyway (allow_shared_mismatch=True).", stacklevel=3)


def _load_checked_tensors(
    path: Path, specs: dict[str, Any], expected: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Names, shapes and dtypes from the header first; then the data, checked for NaN/inf."""
    _check_tensor_specs(path, specs, expected)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            tensors = {name: handle.get_tensor(name) for name in expected}
    except SafetensorError as error:
        raise _invalid(path, f"safetensors could not read it ({error})") from error
    bad = [
        name
        for name, tensor in tensors.items()
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]
    if bad:
        raise CheckpointError(
            f"{path}: non-finite values (NaN or inf) in tensor(s) {bad}; "
            "the run that wrote it probably diverged"
        )
    return tensors


def _check_tensor_specs(
    path: Path, specs: dict[str, Any], expected: dict[str, torch.Tensor]
) -> None:
    """All problems in one message: missing, unexpected, wrong shape, wrong dtype."""
    problems = []
    missing = sorted(set(expected) - set(specs))
    unexpected = sorted(set(specs) - set(expected))
    if missing:
        problems.append(f"missing tensor(s) {missing}")
    if unexpected:
        problems.append(f"unexpected tensor(s) {unexpected}")
    for name in sorted(set(expected) & set(specs)):
        want_shape, got_shape = list(expected[name].shape), specs[name]["shape"]
        if got_shape != want_shape:
            problems.append(f"{name}: shape {got_shape} in checkpoint, model expects {want_shape}")
        want_dtype, got_dtype = _dtype_name(expected[name].dtype), specs[name]["dtype"]
        if got_dtype != want_dtype:
            problems.append(f"{name}: dtype {got_dtype} in checkpoint, model expects {want_dtype}")
    if problems:
        raise CheckpointError(
            f"{path}: checkpoint tensors do not match the model: {'; '.join(problems)}"
        )


# --------------------------------------------------------------------------- helpers


def _dtype_name(dtype: torch.dtype) -> str:
    return _SAFETENSORS_DTYPES.get(dtype, str(dtype))


def _numel(shape: list[int]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


def _device_of(module: torch.nn.Module) -> torch.device:
    parameter = next(module.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _package_version() -> str:
    """Imported lazily: `modularforge/__init__.py` may import this module before it sets it."""
    try:
        from . import __version__
    except ImportError:
        return "unknown"
    return __version__

"""The safetensors container, read by hand: header, metadata, tensor specs and checked tensors.

Why by hand: doing the parsing ourselves lets every failure say what is wrong
(truncated, not safetensors, not ours, a FIFO, a header nested 100,000 deep)
and guarantees that a pickle is recognised as "not safetensors" from its first
bytes, long before anything could interpret it. Nothing here allocates more than
the file itself holds: the header is bounded, every tensor's byte span must match
its shape and dtype, and tensors are only read after their names, shapes and
dtypes were checked against what the caller expects.

File layout: the safetensors header's `__metadata__` holds one key,
`"modularforge"`, whose value is a JSON object with at least `kind` and
`format_version`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from modularforge.files.regular_file import (
    SpecialFileError,
    open_regular_file,
    require_regular_file,
)

__all__ = [
    "METADATA_KEY",
    "CheckpointConfigError",
    "CheckpointError",
    "SharedMismatchError",
    "check_tensor_specs",
    "dtype_name",
    "invalid",
    "load_checked_tensors",
    "parse_json",
    "read_checkpoint_header",
]

#: The one `__metadata__` key this package uses; its value is a JSON string.
METADATA_KEY = "modularforge"
#: safetensors refuses headers above 100 MB; a bigger claimed length means "not safetensors".
MAX_HEADER_BYTES = 100_000_000
#: torch dtype -> the dtype name safetensors writes in its header.
SAFETENSORS_DTYPES = {
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
#: Bytes per element of each safetensors dtype name (for the byte-span check).
_DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
    "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
}  # fmt: skip


class CheckpointError(ValueError):
    """The file is not a valid modularforge checkpoint, or does not fit the model."""


class CheckpointConfigError(CheckpointError):
    """The checkpoint was written for a model with a different config."""


class SharedMismatchError(CheckpointError):
    """The expert was trained against different shared weights than the ones given."""


def invalid(path: Path, reason: str) -> CheckpointError:
    """The error for a file that is not a (well-formed) modularforge checkpoint."""
    return CheckpointError(f"{path} is not a valid modularforge checkpoint: {reason}")


def parse_json(path: Path, text: str | bytes, what: str) -> Any:
    """`json.loads`, with every failure (bad syntax, absurd nesting) as a `CheckpointError`.

    Python's JSON parser recurses once per nesting level, so `[[[[...]]]]` a
    hundred thousand deep escapes as `RecursionError`; no checkpoint of ours
    nests more than a few levels, so such a file is simply not ours.
    """
    try:
        return json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError, TypeError) as error:
        raise invalid(path, f"the {what} is not valid JSON ({error})") from None
    except RecursionError:
        raise invalid(path, f"the {what} is JSON nested too deeply to parse") from None


def read_checkpoint_header(path: Path) -> dict[str, Any]:
    """Validate the file's container and return `{file_size, header_size, metadata, tensors}`.

    `tensors` maps each name to `{"dtype", "shape"}`; `metadata` is the parsed
    modularforge JSON object. Only the header is read.
    """
    try:
        handle = open_regular_file(path, "checkpoint file")
    except SpecialFileError as error:
        raise CheckpointError(str(error)) from None
    with handle:
        file_size = os.fstat(handle.fileno()).st_size
        prefix = handle.read(8)
        if len(prefix) < 8:
            detail = "the file is empty (0 bytes)" if not prefix else f"only {len(prefix)} bytes"
            raise invalid(path, f"{detail}, too short for a safetensors header (truncated?)")
        header_size = int.from_bytes(prefix, "little")
        if header_size > file_size - 8 or header_size > MAX_HEADER_BYTES:
            raise invalid(
                path,
                f"the first 8 bytes announce a {header_size}-byte header but only "
                f"{file_size - 8} bytes follow (the file is truncated, or not safetensors: "
                f"pickle and torch.save files are refused, never unpickled)",
            )
        header_bytes = handle.read(header_size)
    if not header_bytes.startswith(b"{"):
        raise invalid(path, "the header does not start with '{' (not a safetensors file)")
    try:
        header_text = header_bytes.decode("utf-8")
    except UnicodeDecodeError as error:
        raise invalid(path, f"the header is not valid UTF-8 ({error})") from None
    header = parse_json(path, header_text, "header")
    if not isinstance(header, dict):
        raise invalid(path, "the header is not a JSON object")
    raw_metadata = header.pop("__metadata__", None)
    tensors = _tensor_specs(path, header, data_size=file_size - 8 - header_size)
    return {
        "file_size": file_size,
        "header_size": header_size,
        "metadata": _parse_metadata(path, raw_metadata),
        "tensors": tensors,
    }


def _tensor_specs(path: Path, header: dict[str, Any], data_size: int) -> dict[str, Any]:
    """Tensor name -> {"dtype", "shape"}; each byte span must fit its shape and the file."""
    specs: dict[str, Any] = {}
    data_end = 0
    for name, entry in header.items():
        try:
            dtype, shape, (start, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
            if not (_is_int(start) and _is_int(end) and 0 <= start <= end):
                raise ValueError(f"bad data_offsets {entry['data_offsets']!r}")
            if not isinstance(shape, list) or not all(_is_int(s) and s >= 0 for s in shape):
                raise ValueError(f"bad shape {shape!r}")
            if dtype not in _DTYPE_BYTES:
                raise ValueError(f"unknown dtype {dtype!r}")
            n_bytes = numel(shape) * _DTYPE_BYTES[dtype]
            if end - start != n_bytes:
                raise ValueError(
                    f"shape {shape} of {dtype} needs {n_bytes} bytes, data_offsets give "
                    f"{end - start}"
                )
            specs[name] = {"dtype": dtype, "shape": list(shape)}
        except (KeyError, TypeError, ValueError) as error:
            raise invalid(
                path, f"header entry for tensor {name!r} is malformed ({error})"
            ) from None
        data_end = max(data_end, end)
    if data_size < data_end:
        raise invalid(
            path,
            f"the data section is {data_size} bytes but the header describes {data_end} "
            "(the file is truncated)",
        )
    if data_size > data_end:
        raise invalid(path, f"{data_size - data_end} unexpected bytes after the tensor data")
    return dict(sorted(specs.items()))


def _parse_metadata(path: Path, raw_metadata: Any) -> dict[str, Any]:
    if not isinstance(raw_metadata, dict) or METADATA_KEY not in raw_metadata:
        raise invalid(
            path, f"it is a safetensors file, but its metadata has no {METADATA_KEY!r} entry"
        )
    metadata = parse_json(path, raw_metadata[METADATA_KEY], f"{METADATA_KEY!r} metadata")
    if not isinstance(metadata, dict):
        raise invalid(path, f"the {METADATA_KEY!r} metadata is not a JSON object")
    return metadata


def check_tensor_specs(
    path: Path, specs: dict[str, Any], expected: dict[str, Any], what: str = "model"
) -> None:
    """All problems in one message: missing, unexpected, wrong shape, wrong dtype.

    `expected` maps names to tensors (any device, `meta` included) or to
    `{"dtype", "shape"}` dicts.
    """
    problems = []
    missing = sorted(set(expected) - set(specs))
    unexpected = sorted(set(specs) - set(expected))
    if missing:
        problems.append(f"missing tensor(s) {_short(missing)}")
    if unexpected:
        problems.append(f"unexpected tensor(s) {_short(unexpected)}")
    for name in sorted(set(expected) & set(specs)):
        want = expected[name]
        if isinstance(want, torch.Tensor):
            want = {"shape": list(want.shape), "dtype": dtype_name(want.dtype)}
        if specs[name]["shape"] != list(want["shape"]):
            problems.append(
                f"{name}: shape {specs[name]['shape']} in checkpoint, {what} expects "
                f"{list(want['shape'])}"
            )
        if specs[name]["dtype"] != want["dtype"]:
            problems.append(
                f"{name}: dtype {specs[name]['dtype']} in checkpoint, {what} expects "
                f"{want['dtype']}"
            )
    if problems:
        raise CheckpointError(
            f"{path}: checkpoint tensors do not match the {what}: {'; '.join(problems[:8])}"
            + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
        )


def load_checked_tensors(
    path: Path, specs: dict[str, Any], expected: dict[str, Any], what: str = "model"
) -> dict[str, torch.Tensor]:
    """Names, shapes and dtypes from the header first; then the data, checked for NaN/inf."""
    check_tensor_specs(path, specs, expected, what)
    try:  # checked again: the path could have been replaced since its header was read
        require_regular_file(path, "checkpoint file")
    except SpecialFileError as error:
        raise CheckpointError(str(error)) from None
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            tensors = {name: handle.get_tensor(name) for name in expected}
    except SafetensorError as error:
        raise invalid(path, f"safetensors could not read it ({error})") from error
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


def dtype_name(dtype: torch.dtype) -> str:
    """The safetensors header's name for a torch dtype ("F32", "BF16"...)."""
    return SAFETENSORS_DTYPES.get(dtype, str(dtype))


def numel(shape: list[int]) -> int:
    """Number of elements of a shape given as a list (1 for a scalar)."""
    count = 1
    for size in shape:
        count *= size
    return count


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _short(names: list[str], limit: int = 6) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return f"[{shown}{f', ... ({len(names)} in all)' if len(names) > limit else ''}]"

"""The pipeline's `manifest.json`: read, check against its schema, write atomically.

The manifest is what a rerun trusts to decide what to skip, so a damaged one must
stop the run with one message that names the file and the field, not a
`KeyError` three functions later (a list at the top, `phases` a list, a string
where an object belongs, a truncated file, version 999, `domains` a string).
The schema below is the one `run_pipeline` writes; `validate_manifest` checks
every field a rerun or a loader reads, and leaves the rest (histories, measured
timings) free.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from modularforge.files.atomic import atomic_write_bytes
from modularforge.files.finite_json import dumps_finite
from modularforge.files.regular_file import open_regular_file

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "modularforge-pipeline"
MANIFEST_VERSION = 1
#: A manifest is a few hundred kB at most; anything far larger is not one.
MAX_MANIFEST_BYTES = 64 << 20
_FIX = "restore it, or delete it (and choose a fresh --out) to start the run again"


class ManifestError(ValueError):
    """`manifest.json` cannot be read or does not match the schema; names the file and field."""


# A schema is a type, a tuple of types, or a dict {field: schema} (an object with those
# fields; "?field" optional), or ("list", schema), or ("map", schema) (any keys).
_NUMBER = (int, float)
_HASH = str
_SHARED = {
    "status": str, "file": str, "sha256": _HASH, "fingerprint": str, "seconds": _NUMBER,
    "steps": int, "tokens": int, "?history": dict,
    "phase1_ffn": {"file": str, "sha256": _HASH},
}  # fmt: skip
_EXPERT = {
    "status": str, "index": int, "file": str, "sha256": _HASH, "shared_fingerprint": str,
    "seconds": _NUMBER, "steps": int, "tokens": int, "?memory": dict, "?history": dict,
    "?init": str,
}  # fmt: skip
_ROUTER = {
    "status": str, "file": str, "sha256": _HASH, "expert_sha256": ("list", _HASH),
    "top_k": int, "seconds": _NUMBER, "steps": int, "tokens": int, "?history": dict,
}  # fmt: skip
_DENSE = {
    "status": str, "files": ("list", str), "sha256": ("list", _HASH), "seconds": _NUMBER,
    "steps": int, "tokens": int, "?history": dict,
}  # fmt: skip
_MIXING = {
    "status": str, "files": ("list", str), "sha256": ("list", _HASH), "fingerprint": str,
    "inputs": dict, "top_k": int, "trainable": str, "trainable_parameters": int,
    "seconds": _NUMBER, "steps": int, "tokens": int, "?memory": dict, "?history": dict,
}  # fmt: skip
_EVALUATION = {
    "status": str, "inputs": dict, "matrix": dict, "comparison": dict,
    "?routing_fractions": dict, "seconds": _NUMBER,
}  # fmt: skip
SCHEMA: dict[str, Any] = {
    "format": str,
    "version": int,
    "?settings": dict,
    "?config": dict,
    "?domains": ("list", str),
    "?tokens_per_step": int,
    "?events": ("list", str),
    "?seconds_this_run": _NUMBER,
    "?inputs": ("map", str),
    "phases": {
        "?shared": _SHARED,
        "?experts": ("map", _EXPERT),
        "?routers": ("map", _ROUTER),
        "?mixing": _MIXING,
        "?dense": _DENSE,
        "?evaluation": _EVALUATION,
    },
}


def _type_words(expected: Any) -> str:
    if isinstance(expected, dict):
        return "an object"
    if isinstance(expected, tuple) and expected and expected[0] == "list":
        return "a list"
    if isinstance(expected, tuple) and expected and expected[0] == "map":
        return "an object"
    names = {str: "a string", int: "an integer", float: "a number", dict: "an object"}
    types = expected if isinstance(expected, tuple) else (expected,)
    return " or ".join(names.get(t, t.__name__) for t in types)


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "true/false"}
    names |= {int: "an integer", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _check(value: Any, schema: Any, where: str, path: Path) -> None:
    def fail(expected: str) -> None:
        raise ManifestError(
            f"{path}: field {where or '(top level)'} must be {expected}, got "
            f"{_json_type(value)} ({json.dumps(value)[:60]}); {_FIX}"
        )

    if isinstance(schema, dict):
        if not isinstance(value, dict):
            fail("an object")
        for key, sub in schema.items():
            name = key.lstrip("?")
            if name not in value:
                if key.startswith("?"):
                    continue
                raise ManifestError(
                    f"{path}: field {where + '.' if where else ''}{name} is missing; {_FIX}"
                )
            _check(value[name], sub, f"{where}.{name}" if where else name, path)
    elif isinstance(schema, tuple) and schema and schema[0] in ("list", "map"):
        kind, item = schema
        if kind == "list":
            if not isinstance(value, list):
                fail("a list")
            for i, element in enumerate(value):
                _check(element, item, f"{where}[{i}]", path)
        else:
            if not isinstance(value, dict):
                fail("an object")
            for key, element in value.items():
                _check(element, item, f"{where}.{key}", path)
    else:
        types = schema if isinstance(schema, tuple) else (schema,)
        if isinstance(value, bool) or not isinstance(value, types):
            fail(_type_words(schema))
        if isinstance(value, float) and not math.isfinite(value):
            fail("a finite number")


def validate_manifest(manifest: Any, path: str | Path = MANIFEST_NAME) -> dict[str, Any]:
    """Return `manifest` if it matches the pipeline's schema; else `ManifestError`."""
    path = Path(path)
    if not isinstance(manifest, dict):
        raise ManifestError(
            f"{path}: the top level must be an object, got {_json_type(manifest)}; {_FIX}"
        )
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ManifestError(
            f"{path}: field format is {manifest.get('format')!r}, not {MANIFEST_FORMAT!r}: "
            "this is not a modularforge pipeline manifest (a folder from another command?); "
            "choose another --out"
        )
    version = manifest.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version != MANIFEST_VERSION:
        raise ManifestError(
            f"{path}: field version is {version!r}; this modularforge reads version "
            f"{MANIFEST_VERSION} only (a newer or damaged manifest); {_FIX}"
        )
    _check(manifest, SCHEMA, "", path)
    domains = manifest.get("domains", [])
    if len(set(domains)) != len(domains):
        raise ManifestError(f"{path}: field domains lists a domain twice ({domains}); {_FIX}")
    experts = manifest["phases"].get("experts", {})
    unknown = sorted(set(experts) - set(domains))
    if unknown:
        raise ManifestError(
            f"{path}: field phases.experts has experts for {unknown}, not in domains; {_FIX}"
        )
    return manifest


def read_manifest_json(path: str | Path, fix: str = _FIX) -> Any:
    """The decoded JSON of a manifest file, read safely; `ManifestError` naming it otherwise.

    A regular file only (a FIFO or device is refused), at most `MAX_MANIFEST_BYTES`,
    UTF-8 JSON nested no deeper than Python can parse. No schema: `read_manifest` checks
    the pipeline's, and `pipeline-seeds` checks the fields it averages. `fix` ends each
    message with what the reader should do.
    """
    path = Path(path)
    with open_regular_file(path, "pipeline manifest", fix) as handle:
        data = handle.read(MAX_MANIFEST_BYTES + 1)
    if not data.strip():
        raise ManifestError(f"{path} is empty (a truncated write?); {fix}")
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{path} is larger than {MAX_MANIFEST_BYTES} bytes; {fix}")
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise ManifestError(f"{path} is not UTF-8 text ({error.reason}); {fix}") from None
    except json.JSONDecodeError as error:
        raise ManifestError(
            f"{path} is not valid JSON (line {error.lineno}, column {error.colno}: {error.msg}; "
            f"truncated?); {fix}"
        ) from None
    except RecursionError:
        raise ManifestError(f"{path} nests JSON too deeply to be a manifest; {fix}") from None


def read_manifest(out_dir: str | Path) -> dict[str, Any]:
    """The validated manifest of a pipeline folder ({} when there is none yet)."""
    path = Path(out_dir) / MANIFEST_NAME
    if not path.exists() and not path.is_symlink():
        return {}
    manifest = read_manifest_json(path)
    try:
        return validate_manifest(manifest, path)
    except RecursionError:
        raise ManifestError(f"{path} nests JSON too deeply to be a manifest; {_FIX}") from None


def write_manifest(out_dir: str | Path, manifest: dict[str, Any]) -> Path:
    """Atomic: a crash leaves the previous manifest, never half of one."""
    path = Path(out_dir) / MANIFEST_NAME
    data = dumps_finite(manifest, str(path), indent=2, sort_keys=True, default=_json_default)
    return atomic_write_bytes(path, (data + "\n").encode("utf-8"))


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, torch.Tensor):
        return value.tolist()
    raise TypeError(f"cannot store {type(value).__name__} in the manifest")

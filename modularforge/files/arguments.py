"""Argument checks for the file functions: a wrong argument is named before any work starts.

Why: without them `save_expert(model, None)` fails deep inside `pathlib` with
"expected str, bytes or os.PathLike object, not NoneType", and `load_expert(path,
"shared.safetensors")` with "'str' object has no attribute 'config'"; neither says
which argument was wrong, or what it should have been. The functions in
`modularforge.files.checkpoint` call these first, and the `ModuleTrainerModel`
methods delegate to those functions, so both spellings of the API report a
mistake in the same words.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from modularforge.model.shared import SharedComponents
from modularforge.model.trainer_model import ModuleTrainerModel

__all__ = ["check_instance", "check_trainer_model", "check_trunk", "checked_path"]


def checked_path(path: Any, name: str = "path") -> Path:
    """`path` as a `Path`, or a `TypeError` naming the argument `name`.

    Only `str` and `os.PathLike` are accepted: `None` (an unset option) and bytes
    are refused here, with the argument's name, instead of by `pathlib`.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name} must be a file path (str or os.PathLike), got {_describe(path)}")
    return Path(path)


def check_instance(value: Any, expected: type, name: str, hint: str = "") -> None:
    """Raise a `TypeError` naming the argument `name` unless `value` is an `expected`."""
    if not isinstance(value, expected):
        what = f"a {expected.__name__}{f' ({hint})' if hint else ''}"
        raise TypeError(f"{name} must be {what}, got {_describe(value)}")


def check_trunk(shared: Any, name: str = "shared") -> None:
    """`shared` must be a `SharedComponents`: the trunk an expert is saved or loaded against."""
    check_instance(shared, SharedComponents, name, "the trunk the expert was trained on")


def check_trainer_model(model: Any, name: str = "model") -> None:
    """`model` must be a `ModuleTrainerModel`: the trunk + expert whose expert is saved."""
    check_instance(model, ModuleTrainerModel, name, "the trunk + expert to save")


def _describe(value: Any) -> str:
    """`None`, the type (and, for text, a short repr: it shows which file was meant)."""
    if value is None:
        return "None"
    if not isinstance(value, (str, bytes)):
        return f"a {type(value).__name__}"
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"

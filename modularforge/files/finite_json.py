"""JSON for records: every number finite, or nothing is written.

Python's `json.dumps` writes NaN and Infinity as bare words, which no JSON parser
accepts, and a manifest that records a NaN loss then reads as a finished run. A
record with a non-finite number means the run diverged, so the writers refuse it
before anything reaches the disk, and name the field that holds the number.
"""

from __future__ import annotations

import json
import math
from typing import Any


class NonFiniteRecordError(ValueError):
    """A number to be recorded is NaN or infinite: the run diverged; nothing was written."""


def dumps_finite(value: Any, what: str, **options: Any) -> str:
    """`json.dumps(value, **options)`, refusing NaN and infinity with the field's path."""
    where = _first_non_finite(value, "")
    if where is not None:
        raise NonFiniteRecordError(
            f"{what}: field {where or '(top level)'} is not a finite number; the run diverged "
            "and nothing was recorded. Lower the learning rate, or check the data"
        )
    return json.dumps(value, allow_nan=False, **options)


def _first_non_finite(value: Any, path: str) -> str | None:
    """The dotted path of the first NaN or infinite float inside `value`, if any."""
    if isinstance(value, float):
        return None if math.isfinite(value) else path
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list | tuple):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = _first_non_finite(item, f"{path}.{key}" if path else str(key))
        if found is not None:
            return found
    return None

"""nbval plugin: a notebook cell of trained numbers is compared within its measured tolerance.

nbval compares a cell's stored outputs with a fresh run's, character for character.
That is right for counts, bytes and verdicts, and wrong for a loss after 300
optimizer steps, which moves in its second decimal on a CPU with other vector
kernels. A cell whose metadata names ``cpu_tolerance`` (a key into
``book/data/cpu-spread.json``) is compared by `compare_text` instead: every word,
verdict and layout must match, and every number may move by the tolerance
measured for that key, no more. Cells without the key are compared exactly.
Loaded from the repository's root ``conftest.py``.
"""

from __future__ import annotations

import copy

# NUMBER_KEYS: the metadata key under which `prose` lists, for each number of its
# Markdown, the tolerance key it is compared with (None: exactly).
from modularforge.chapters.notebook import NUMBER_KEYS
from modularforge.measure.reproducibility import (
    Tolerance,
    compare_numbers,
    compare_text,
    tolerance_for,
)

TEXT_FIELDS = (
    "text/plain",
    "text/markdown",
    "text/html",
    "application/papermill.record/text/plain",
)


def cell_tolerance(metadata: dict) -> Tolerance | None:
    """The tolerance a cell's metadata asks for, or None for an exact comparison."""
    spec = metadata.get("cpu_tolerance")
    if spec is None:
        return None
    if not isinstance(spec, dict) or "key" not in spec or "scale" not in spec:
        raise ValueError(
            f"cpu_tolerance must be {{'key': ..., 'scale': 'abs'|'rel'}}, got {spec!r}"
        )
    tolerance = tolerance_for(spec["key"])
    if tolerance.scale != spec["scale"]:
        raise ValueError(
            f"cell asks for a {spec['scale']} tolerance under {spec['key']!r}, but it was "
            f"measured as {tolerance.scale}: rerun `make cpu-spread`"
        )
    return tolerance


def _texts(output: dict) -> list[tuple[str | None, str]]:
    """(field, text) pairs of an output that carry text: the stream, or each text MIME type."""
    if output.get("output_type") == "stream":
        return [(None, output.get("text", ""))]
    data = output.get("data", {})
    return [(field, data[field]) for field in TEXT_FIELDS if field in data]


def align_within_tolerance(test: list, ref: list, tolerance: Tolerance, sanitize) -> list[str]:
    """Replace each fresh text that matches its reference within `tolerance` by the reference.

    Returns the reasons for the texts that did not match (left as they were, so
    nbval reports them). `sanitize` is nbval's own, applied before comparing.
    """
    problems: list[str] = []
    if len(test) != len(ref):
        return problems  # nbval reports the different number of outputs itself
    for fresh, stored in zip(test, ref, strict=True):
        if fresh.get("output_type") != stored.get("output_type"):
            continue
        fresh_texts, stored_texts = _texts(fresh), _texts(stored)
        for (field, new), (field_ref, old) in zip(fresh_texts, stored_texts, strict=False):
            if field != field_ref:
                continue
            new_text = "".join(new) if isinstance(new, list) else new
            old_text = "".join(old) if isinstance(old, list) else old
            result = compare_text(sanitize(old_text), sanitize(new_text), tolerance)
            if not result.ok:
                problems.append(f"{field or 'stream'}: {result.reason}")
                continue
            if field is None:
                fresh["text"] = old
            else:
                fresh["data"][field] = old
    return problems


def align_prose(test: list, ref: list, sanitize) -> list[str]:
    """For displays whose stored metadata lists a tolerance key per number, compare that way."""
    problems: list[str] = []
    if len(test) != len(ref):
        return problems
    for fresh, stored in zip(test, ref, strict=True):
        keys = stored.get("metadata", {}).get(NUMBER_KEYS)
        if not isinstance(keys, list) or "text/markdown" not in stored.get("data", {}):
            continue
        if "text/markdown" not in fresh.get("data", {}):
            continue
        tolerances = [None if key is None else tolerance_for(key) for key in keys]
        old = sanitize(_joined(stored["data"]["text/markdown"]))
        new = sanitize(_joined(fresh["data"]["text/markdown"]))
        result = compare_numbers(old, new, tolerances)
        if result.ok:
            fresh["data"]["text/markdown"] = stored["data"]["text/markdown"]
        else:
            problems.append(f"prose: {result.reason}")
    return problems


def _joined(value) -> str:
    return "".join(value) if isinstance(value, list) else value


def pytest_configure(config) -> None:
    """Wrap nbval's comparison once per session, if nbval is in use."""
    try:
        from nbval.plugin import IPyNbCell
    except ImportError:
        return
    if getattr(IPyNbCell.compare_outputs, "_within_tolerance", False):
        return
    original = IPyNbCell.compare_outputs

    def compare_outputs(self, test, ref, skip_compare=None):
        tolerance = cell_tolerance(self.cell.metadata)
        test = copy.deepcopy(test)  # nbformat nodes, as nbval expects them
        problems = align_prose(test, ref, self.sanitize)
        if tolerance is not None:
            problems += align_within_tolerance(test, ref, tolerance, self.sanitize)
        same = original(self, test, ref, skip_compare)
        if not same and problems:
            self.comparison_traceback.append("within tolerance? " + "; ".join(problems))
        return same

    compare_outputs._within_tolerance = True
    IPyNbCell.compare_outputs = compare_outputs

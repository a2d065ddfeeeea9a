"""Records are valid JSON with finite numbers, or nothing is written."""

from __future__ import annotations

import json
import math

import pytest

from modularforge.files.finite_json import NonFiniteRecordError, dumps_finite
from modularforge.pipeline.manifest import MANIFEST_NAME, write_manifest
from modularforge.pipeline.seed_study import write_summary


@pytest.mark.parametrize(
    ("record", "field"),
    [
        ({"loss": math.nan}, "loss"),
        ({"phases": {"mixing": {"eval": [5.1, math.inf]}}}, "phases.mixing.eval.1"),
        ([1.0, -math.inf], "1"),
    ],
)
def test_a_non_finite_number_is_refused_by_its_field(record, field: str) -> None:
    with pytest.raises(NonFiniteRecordError, match=rf"field {field} is not a finite number"):
        dumps_finite(record, "the record")


def test_negative_control_finite_records_are_written_as_plain_json() -> None:
    record = {"loss": 5.25, "steps": [1, 2], "name": "nan", "ok": True, "none": None}
    assert json.loads(dumps_finite(record, "the record")) == record


def test_a_diverged_manifest_leaves_the_previous_one_in_place(tmp_path) -> None:
    write_manifest(tmp_path, {"format": "modularforge-pipeline", "loss": 5.0})
    before = (tmp_path / MANIFEST_NAME).read_bytes()
    with pytest.raises(NonFiniteRecordError, match="the run diverged"):
        write_manifest(tmp_path, {"format": "modularforge-pipeline", "loss": math.nan})
    assert (tmp_path / MANIFEST_NAME).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [MANIFEST_NAME]  # no temporary left


def test_a_seed_summary_with_a_nan_is_not_written(tmp_path) -> None:
    with pytest.raises(NonFiniteRecordError):
        write_summary({"rows": {"dense": math.nan}}, tmp_path / "seeds.json", "cmd")
    assert not (tmp_path / "seeds.json").exists()

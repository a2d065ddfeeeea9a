"""Every loading fault of the catalogue raises the documented type and message, fast."""

from __future__ import annotations

from pathlib import Path

import pytest

from modularforge.chapters.ch07_faults import trigger
from modularforge.chapters.ch07_faults_loading import LOADING_FAULTS


@pytest.mark.parametrize("fault", LOADING_FAULTS, ids=lambda f: f.trigger.__name__.strip("_"))
def test_loading_fault_raises_documented_error(fault, tmp_path: Path) -> None:
    report = trigger(fault, tmp_path)
    assert isinstance(report.error, fault.error), report.message
    assert fault.message in report.message
    assert not isinstance(report.error, (RecursionError, MemoryError))


def test_catalogue_entries_are_distinct() -> None:
    assert len({fault.symptom for fault in LOADING_FAULTS}) == len(LOADING_FAULTS) >= 15
    assert len({fault.trigger for fault in LOADING_FAULTS}) == len(LOADING_FAULTS)

"""The storage tracker: exact on known allocations, and in agreement with the heap tracker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from modularforge.measure.storage_tracker import StoragePeakTracker
from modularforge.measure.tracker_agreement import TRACKER_AGREEMENT, tracker_gaps

pytestmark = pytest.mark.usefixtures("one_thread_per_module")
MB = 1_000_000
REPO = Path(__file__).resolve().parents[2]


def test_counts_what_is_made_and_its_release() -> None:
    with StoragePeakTracker() as tracker:
        a = torch.ones(1000)  # 4,000 bytes
        b = torch.ones(500)  # 2,000 bytes
        del a
        c = torch.ones(250)  # 1,000 bytes
        alive_before_exit = tracker.alive
    assert tracker.peak == 6_000  # a and b together
    assert alive_before_exit == 3_000  # b and c: a's release was seen
    assert b.numel() + c.numel() == 750


def test_views_and_in_place_ops_on_older_tensors_count_nothing() -> None:
    old = torch.zeros(10_000)
    with StoragePeakTracker() as tracker:
        old.add_(1)
        view = old[:5000].view(50, 100).t()
        detached = old.detach()
    assert tracker.peak == 0
    assert view.shape == (100, 50) and detached.sum() == 10_000  # the ops really ran
    # Negative control: an out-of-place op on the same tensor is counted.
    with StoragePeakTracker() as tracker:
        new = old * 2
    assert tracker.peak == new.untyped_storage().nbytes() == 40_000


@pytest.mark.parametrize("frozen", [True, False], ids=["expert", "full"])
def test_agrees_with_the_heap_tracker_on_a_lean_step(frozen: bool) -> None:
    """The seed preset's lean step at 2 x 128 tokens: within TRACKER_AGREEMENT of the heap tracker's peak.

    In a fresh process, because the heap tracker's cost grows with the heap's
    fragmentation (the reason for the storage tracker). The static tensors are
    added to both alike, so the increase above them is held to the same bar.
    """
    code = (
        "import json; from modularforge.measure.tracker_agreement import compare_trackers; "
        "from modularforge.lean.step import LEAN_EXPERT; "
        f"print(json.dumps(compare_trackers('seed', 2, 128, {frozen}, LEAN_EXPERT)))"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env, cwd=REPO
    )
    assert done.returncode == 0, done.stderr
    peaks = json.loads(done.stdout.strip().splitlines()[-1])
    gaps = tracker_gaps(peaks)
    assert max(gaps.values()) < TRACKER_AGREEMENT, (gaps, peaks)


def test_negative_control_a_gap_of_the_step_size_fails_the_bar() -> None:
    """The bar is read against the peak: a tracker that missed a tenth of it would fail."""
    agree = {"heap": 195_500_000, "storages": 193_500_000,
             "heap increase": 44_300_000, "storages increase": 42_300_000}  # fmt: skip
    assert max(tracker_gaps(agree).values()) < TRACKER_AGREEMENT  # the layout slack measured
    missed = {**agree, "storages": 175_000_000, "storages increase": 23_800_000}
    assert max(tracker_gaps(missed).values()) > TRACKER_AGREEMENT

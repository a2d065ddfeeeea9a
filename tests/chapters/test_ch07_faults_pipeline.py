"""Every pipeline/CLI fault of the catalogue raises the documented type and message (issue 12 B)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from modularforge.chapters.ch07_fault_catalogue import CATALOGUE, catalogue_table
from modularforge.chapters.ch07_faults import trigger
from modularforge.chapters.ch07_faults_pipeline import PIPELINE_FAULTS, STORED_RUN, CommandLineError

pytestmark = pytest.mark.usefixtures("one_thread_per_module")

#: Issue 12, part B: item -> symptoms of the catalogue entries that show it.
PART_B = {
    2: ["`<out>/state` is a symbolic link to a folder of yours"],
    3: ["`train-expert --out` the same file as `--shared`"],
    4: ["`--out` in a folder that does not exist", "the disk fills up just as the finished trunk is saved"],
    5: ["`eval_max_batches = 0`, found only after all the training", "a NaN `aux_loss_weight`"],
    6: ["a pipeline's training state whose `step` was edited to 10^9",
        "a pipeline's training state overwritten with zeros"],
    7: ["a second run started on a folder a running one holds"],
    8: ["`train-experts --out` a pipeline's folder"],
    9: ["a finished pipeline folder with one expert file replaced by another"],
    13: ["`manifest.json` holding a list", "`manifest.json` cut off mid-way", "`manifest.json` of version 999"],
    14: ["No space left on device (ENOSPC) while saving", "Read-only file system (EROFS) while saving",
         "Input/output error (EIO) while saving", "an `--out` name of 300 characters",
         "`pipeline --out` an existing file", "`--device bogus`", "`--device meta`",
         "`--batch-size 2000000000` on a machine with 16 GB", "`--lr 1e30`: the loss diverges"],
    15: ["the stored run, its dense baseline left out, rerun from read-only storage"],
    16: ["`budget --preset tiny --seq-len 512`"],
}  # fmt: skip


@pytest.mark.parametrize("fault", PIPELINE_FAULTS, ids=lambda f: f.symptom)
def test_pipeline_fault_raises_documented_error(fault, tmp_path: Path) -> None:
    report = trigger(fault, tmp_path)
    assert isinstance(report.error, fault.error), report.message
    assert fault.message in report.message
    assert (
        str(tmp_path) in report.message
        or fault.area == "cli"
        or "PipelineSettings" in report.message
    )
    if isinstance(report.error, CommandLineError):  # one line, a nonzero status, no traceback
        assert report.message.startswith("exit status 2, stderr: error: ")
        assert "\n" not in report.message and "Traceback" not in report.message


def test_every_item_of_part_b_has_an_entry() -> None:
    symptoms = {fault.symptom for fault in PIPELINE_FAULTS}
    listed = [s for entries in PART_B.values() for s in entries]
    assert sorted(PART_B) == [2, 3, 4, 5, 6, 7, 8, 9, 13, 14, 15, 16]
    assert set(listed) == symptoms and len(listed) == len(symptoms)


def test_entries_are_distinct_and_in_the_catalogue() -> None:
    assert len({fault.symptom for fault in PIPELINE_FAULTS}) == len(PIPELINE_FAULTS)
    assert len({fault.trigger for fault in PIPELINE_FAULTS}) == len(PIPELINE_FAULTS)
    assert set(PIPELINE_FAULTS) <= set(CATALOGUE)
    assert {fault.area for fault in PIPELINE_FAULTS} <= {"pipeline", "cli", "training", "mixture"}


USE_THE_STORED_RUN = {
    "_read_only_stored_run", "_train_experts_into_a_pipeline", "_replaced_expert_file",
}  # fmt: skip


def test_the_stored_run_is_left_untouched(tmp_path: Path) -> None:
    before = {p: p.read_bytes() for p in STORED_RUN.rglob("*") if p.is_file()}
    for fault in PIPELINE_FAULTS:
        if fault.trigger.__name__ in USE_THE_STORED_RUN:
            scratch = tmp_path / fault.trigger.__name__.strip("_")
            scratch.mkdir()
            trigger(fault, scratch)
    assert {p: p.read_bytes() for p in STORED_RUN.rglob("*") if p.is_file()} == before


def test_the_table_hides_this_process_id(tmp_path: Path) -> None:
    (lock,) = [f for f in PIPELINE_FAULTS if f.trigger.__name__ == "_second_run"]
    report = trigger(lock, tmp_path)
    assert f"process {os.getpid()} " in report.message  # the real message names the holder
    table = catalogue_table([report], tmp_path)
    assert "process <this process> " in table and str(os.getpid()) not in table

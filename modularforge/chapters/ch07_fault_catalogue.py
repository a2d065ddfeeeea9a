"""The whole catalogue of faults, grouped by what the reader was doing when it struck.

`faults.FAULTS` holds the clumsy cases (a truncated file, the wrong trunk),
`faults_loading.LOADING_FAULTS` the hostile files met while loading, and
`faults_pipeline.PIPELINE_FAULTS` what goes wrong around a pipeline run. Chapter 7
prints one table per group from this module, so the page lists every fault the
test suite triggers and cannot drift from the code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from modularforge.chapters.ch07_faults import FAULTS, Fault, FaultReport, report_table, trigger
from modularforge.chapters.ch07_faults_loading import LOADING_FAULTS
from modularforge.chapters.ch07_faults_pipeline import PIPELINE_FAULTS

#: Every fault, in catalogue order.
CATALOGUE: tuple[Fault, ...] = (*FAULTS, *LOADING_FAULTS, *PIPELINE_FAULTS)


@dataclass(frozen=True)
class Group:
    """Faults that strike while the reader does one thing, with the story that ties them."""

    title: str
    areas: tuple[str, ...]
    story: str


#: Reading order of the groups; every area in the catalogue belongs to exactly one.
GROUPS: tuple[Group, ...] = (
    Group(
        "Loading a checkpoint",
        ("checkpoint",),
        "A file arrives from a copy, a colleague or a stranger. Everything about it is checked"
        " against its own header before a byte is trusted: its size, its tensors' shapes, its"
        " format version and the fingerprint of the trunk it was trained with.",
    ),
    Group(
        "Configuring a model",
        ("config",),
        "A config is checked field by field when it is made, so a bad one never reaches a layer.",
    ),
    Group(
        "Feeding data and tokens",
        ("data", "input"),
        "Corpus files, tokenizers and token ids are refused when they are not what they claim"
        " to be, instead of being truncated or clamped into something that trains.",
    ),
    Group(
        "Training and resuming",
        ("training",),
        "A training state is the one file that tells a resumed run where it was; an edited or"
        " damaged one is refused rather than trusted, and the pipeline then sets it aside and"
        " trains that piece again from the start, so a bad state never blocks a folder.",
    ),
    Group(
        "Assembling the mixture",
        ("mixture",),
        "A router learned which expert sits in which slot; experts shuffled, duplicated or"
        " replaced under it are refused by position, and a pipeline folder's files load only"
        " if they are the ones its manifest recorded.",
    ),
    Group(
        "Running the pipeline",
        ("pipeline", "cli"),
        "The pipeline writes a folder of files over many minutes. It checks every setting and"
        " that it can write before the first step, writes and deletes only its own files"
        " inside `--out`, holds the folder for one run at a time, and reads its manifest"
        " against a schema. The command line prints one line and a nonzero exit status for"
        " anything the user or the machine caused.",
    ),
)


def group_of(fault: Fault) -> Group:
    """The group a fault belongs to (raises if its area has none: a new area needs a group)."""
    for group in GROUPS:
        if fault.area in group.areas:
            return group
    raise ValueError(
        f"fault {fault.symptom!r} has area {fault.area!r}, which no group in"
        " modularforge.chapters.ch07_fault_catalogue.GROUPS covers; add the area to a group"
    )


def run_all(directory: Path) -> list[FaultReport]:
    """Trigger every fault of the catalogue, each in its own sub-directory of `directory`."""
    reports = []
    for index, fault in enumerate(CATALOGUE):
        scratch = directory / f"{index:03d}"
        scratch.mkdir()
        reports.append(trigger(fault, scratch))
    return reports


def grouped(reports: list[FaultReport]) -> list[tuple[Group, list[FaultReport]]]:
    """Reports split by group, in the groups' reading order; empty groups left out."""
    by_group: dict[str, list[FaultReport]] = {group.title: [] for group in GROUPS}
    for report in reports:
        by_group[group_of(report.fault).title].append(report)
    return [(group, by_group[group.title]) for group in GROUPS if by_group[group.title]]


def catalogue_table(reports: list[FaultReport], directory: Path | None = None) -> str:
    """`faults.report_table`, and this process's id written as `<this process>`.

    The lock fault's message names the process holding the folder, which in the
    catalogue is the one triggering it; its number changes on every run.
    """
    return report_table(reports, directory).replace(
        f"process {os.getpid()} ", "process <this process> "
    )

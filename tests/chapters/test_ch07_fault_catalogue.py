"""The grouped catalogue chapter 7 prints: every fault in exactly one group."""

from __future__ import annotations

import dataclasses

import pytest

from modularforge.chapters.ch07_fault_catalogue import CATALOGUE, GROUPS, group_of, grouped
from modularforge.chapters.ch07_faults import FAULTS, FaultReport


def test_every_fault_of_the_catalogue_has_exactly_one_group():
    for fault in CATALOGUE:
        owners = [group for group in GROUPS if fault.area in group.areas]
        assert len(owners) == 1, fault.symptom
        assert group_of(fault) is owners[0]


def test_catalogue_holds_the_base_faults_and_more():
    assert set(FAULTS) <= set(CATALOGUE)
    assert len(CATALOGUE) > len(FAULTS)
    assert len({fault.symptom for fault in CATALOGUE}) == len(CATALOGUE)


def test_a_fault_with_an_unknown_area_is_refused_by_name():
    stray = dataclasses.replace(FAULTS[0], area="astrology")
    with pytest.raises(ValueError, match="astrology"):
        group_of(stray)


def test_grouped_keeps_every_report_once_in_reading_order():
    reports = [FaultReport(fault, ValueError(fault.symptom)) for fault in CATALOGUE]
    groups = grouped(reports)
    flattened = [report for _, members in groups for report in members]
    assert sorted(id(r) for r in flattened) == sorted(id(r) for r in reports)
    order = [GROUPS.index(group) for group, _ in groups]
    assert order == sorted(order)
    assert all(members for _, members in groups)

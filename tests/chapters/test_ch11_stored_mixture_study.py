"""The stored mixture study (book/data/mixture-study-tiny.json) keeps its own promises:
equal tokens where it says so, counted one way, 3 seeds, its command, and its memory rows."""

from __future__ import annotations

from pathlib import Path

import pytest

from modularforge.chapters.ch11_mixture_report import arm_accounts, study_table
from modularforge.chapters.ch11_mixture_study import ARMS, read_study, study_verdicts
from modularforge.measure.mixture_accounting import arm_accounting

DATA = Path(__file__).resolve().parents[2] / "book" / "data"
#: The main study and its variants (other phase-1 / mixing shares of the same budget).
STUDIES = sorted(DATA.glob("mixture-study-*.json"))


def test_the_main_study_is_stored():
    assert DATA / "mixture-study-tiny.json" in STUDIES


@pytest.fixture(scope="module", params=STUDIES, ids=[p.name for p in STUDIES])
def study(request):
    return read_study(request.param)


def test_command_and_seeds_are_recorded(study):
    assert study["command"].startswith(
        "OMP_NUM_THREADS=1 python -m modularforge.chapters.ch11_mixture_study"
    )
    assert len(study["settings"]["seeds"]) >= 3
    for entry in study["arms"].values():
        assert len(entry["mixed"]) == len(study["settings"]["seeds"])


def test_tokens_are_counted_one_way_and_equal_where_claimed(study):
    s = study["settings"]
    per_step = s["batch_size"] * s["seq_len"]
    n = len(s["domains"])
    expected = {
        "dense": s["budget_steps"],
        "phase1": s["phase1_steps"],
        "fresh_oracle": s["phase1_steps"] + n * s["expert_steps"],
        "branched_oracle": s["phase1_steps"] + n * s["expert_steps"],
        "mix_router": s["budget_steps"],
        "mix_shared": s["budget_steps"],
    }
    if "dense_eqflops" in study["arms"]:  # studies stored before it lack this arm
        expected["dense_eqflops"] = study["arms"]["dense_eqflops"]["steps"]
    assert {arm: e["tokens"] for arm, e in arm_accounts(study).items()} == {
        arm: steps * per_step for arm, steps in expected.items()
    }
    assert list(study["arms"]) == [arm for arm in ARMS if arm in expected]


def test_stored_flops_and_parameters_are_the_accounting(study):
    for arm, entry in study["arms"].items():
        if "flops" in entry:
            expected = arm_accounting(study["settings"], arm, entry.get("steps"))
            assert {key: entry[key] for key in expected} == expected
        if "measured_params" in entry:  # counted on the trained module
            assert entry["measured_params"] == arm_accounts(study)[arm]["params"]
    if "dense_eqflops" in study["arms"]:
        accounts = arm_accounts(study)
        eq, oracle = accounts["dense_eqflops"]["flops"], accounts["branched_oracle"]["flops"]
        assert eq <= oracle < eq * (1 + 1 / study["arms"]["dense_eqflops"]["steps"])


def test_routing_fractions_and_expert_matrix_are_complete(study):
    domains = study["settings"]["domains"]
    for arm in ("mix_router", "mix_shared"):
        for per_seed in study["arms"][arm].get("routing", []):
            assert list(per_seed) == domains
            for layers in per_seed.values():
                assert all(abs(sum(row) - 1) < 1e-6 for row in layers)
    for matrix in study["arms"]["branched_oracle"].get("matrix", []):
        assert list(matrix) == domains and all(list(row) == domains for row in matrix.values())
        # the oracle column is the diagonal of the matrix
    for k, matrix in enumerate(study["arms"]["branched_oracle"].get("matrix", [])):
        for d in domains:
            assert matrix[d][d] == study["arms"]["branched_oracle"]["domains"][d][k]


def test_mixed_is_the_mean_of_the_domains(study):
    for entry in study["arms"].values():
        for k, value in enumerate(entry["mixed"]):
            domains = [entry["domains"][d][k] for d in study["settings"]["domains"]]
            assert value == pytest.approx(sum(domains) / len(domains), rel=1e-9)


def test_verdicts_and_table_recompute(study):
    verdicts = study_verdicts(study)
    assert set(verdicts.values()) <= {"lower", "higher", "inconclusive"}
    assert len(study_table(study)) == len(study["arms"])


def test_training_the_trunk_in_the_mixing_stage_costs_memory(study):
    rows = study["memory"]["rows"]
    expert = rows["expert step (phase 2, frozen trunk)"]
    shared = rows["mixing: router+attention+norms, experts frozen"]
    everything = rows["mixing: all, experts trained"]
    assert expert["peak_bytes"] < shared["peak_bytes"] < everything["peak_bytes"]
    whole = rows.get("phase 1 step (trunk + FFN trained whole)")
    if whole is not None:  # stored since the phase-1 row was added
        assert expert["peak_bytes"] < whole["peak_bytes"]
    assert expert["static_bytes"] < shared["static_bytes"] < everything["static_bytes"]


def test_reused_dense_arms_equal_their_source(study):
    """Arms copied with --reuse-dense are what the source study (re)computed, seed by seed."""
    if "reused" not in study:
        pytest.skip("this study trained its own dense arms")
    source = read_study(DATA.parent.parent / study["reused"]["from"])
    assert study["reused"]["arms"]
    for arm in study["reused"]["arms"]:
        assert study["arms"][arm]["mixed"] == source["arms"][arm]["mixed"]
        assert study["arms"][arm]["domains"] == source["arms"][arm]["domains"]

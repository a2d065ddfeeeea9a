"""The shipped tiny pipeline run and its seed study, checked without retraining anything.

`make measurements` writes `book/data/pipeline-tiny/` (seed 0) and
`book/data/pipeline-tiny-seeds.json` (seeds 0, 1, 2); chapter 9 reads both. These
tests hold the files to what the chapter says about them.
"""

from __future__ import annotations

import json
import math

import pytest

from modularforge.pipeline.evaluation import mixing_row
from modularforge.pipeline.run import (
    ORACLE_ROW,
    PHASE1_ROW,
    UNIFORM_ROW,
    PipelineResult,
    memory_flatness,
    read_manifest,
)
from modularforge.pipeline.seed_study import spread
from modularforge.repo_paths import BOOK_DATA_DIR

RUN_DIR = BOOK_DATA_DIR / "pipeline-tiny"
STUDY = BOOK_DATA_DIR / "pipeline-tiny-seeds.json"


@pytest.fixture(scope="module")
def run() -> PipelineResult:
    return PipelineResult(RUN_DIR, read_manifest(RUN_DIR))


@pytest.fixture(scope="module")
def study() -> dict:
    return json.loads(STUDY.read_text())


def test_training_time_mixed_validation_matches_the_evaluation(run: PipelineResult) -> None:
    """Both are the mixed validation text with equal windows per domain (within 10%)."""
    phases = run.manifest["phases"]
    table = run.comparison
    for phase, row in [("dense", "dense"), ("shared", PHASE1_ROW)]:
        during = math.exp(phases[phase]["history"]["val_loss"][-1])
        after = table.row(row).mixed
        assert abs(during / after - 1) < 0.10, (phase, during, after)
    # the English-only number the old validation reported is far from the mixed one
    assert abs(table.row("dense").domains["english"] / table.row("dense").mixed - 1) > 0.10


def test_the_comparison_has_every_baseline_with_tokens_and_parameters(run) -> None:
    table = run.comparison
    names = [row.name for row in table.rows]
    for needed in (PHASE1_ROW, UNIFORM_ROW, ORACLE_ROW, "MoE top-1", "MoE top-2", "dense"):
        assert needed in names
    assert table.row("dense").training_tokens == table.system_tokens
    assert all(row.training_tokens > 0 and row.parameters > 0 for row in table.rows)
    domains = run.manifest["domains"]
    for i, d in enumerate(domains):
        assert table.row(ORACLE_ROW).domains[d] == table.row(f"expert {i} ({d})").domains[d]


def test_the_shipped_run_kept_memory_flat(run) -> None:
    check = memory_flatness(run.manifest)
    assert check.holds and len(check.live_before) == len(run.manifest["domains"])


def test_the_seed_study_is_three_seeds_of_the_shipped_settings(run, study) -> None:
    assert len(study["seeds"]) >= 3 and len(set(study["seeds"])) == len(study["seeds"])
    assert study["seeds"][0] == run.manifest["settings"]["seed"]
    shipped = {
        k: v for k, v in run.manifest["settings"].items() if k not in ("seed", "progress", "device")
    }
    assert study["settings"] == shipped
    # seed 0 of the study is the shipped run, number for number
    for row in run.comparison.rows:
        assert study["rows"][row.name]["perplexity"]["mixed"]["per_seed"][0] == row.mixed


def test_the_seed_study_statistics_are_recomputed_from_its_per_seed_values(study) -> None:
    for row in study["rows"].values():
        for stats in row["perplexity"].values():
            again = spread(stats["per_seed"])
            assert stats["mean"] == pytest.approx(again.mean)
            assert stats["std"] == pytest.approx(again.std)


def test_the_shipped_run_branches_its_experts_and_has_a_mixing_stage(run) -> None:
    """Issue 13: experts start from the phase-1 FFNs; the mixing stage is a row with its tokens."""
    phases = run.manifest["phases"]
    assert {entry["init"] for entry in phases["experts"].values()} == {"branched"}
    mixing = phases["mixing"]
    assert (
        mixing["steps"] > 0
        and mixing["tokens"] == mixing["steps"] * run.manifest["tokens_per_step"]
    )
    table = run.comparison
    row = table.row(mixing_row(mixing["top_k"]))
    assert (
        row.training_tokens
        == table.row(f"MoE top-{mixing['top_k']}").training_tokens + mixing["tokens"]
    )
    assert row.training_tokens == table.system_tokens == table.row("dense").training_tokens
    # it costs memory the frozen phases don't: trainable attention and norms
    expert_peaks = [e["memory"]["peak_bytes"] for e in phases["experts"].values()]
    assert mixing["memory"]["peak_bytes"] > max(expert_peaks)

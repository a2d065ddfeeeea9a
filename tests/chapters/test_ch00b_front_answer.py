"""The front page's answer: read from the stored studies, and only from a fair comparison."""

from __future__ import annotations

import copy

import pytest

from modularforge.chapters.ch00b_front_answer import parts_answer
from modularforge.chapters.ch11_mixture_study import read_study
from modularforge.measure.paired import paired_difference
from modularforge.plots.bench_plots import load_bench
from modularforge.repo_paths import BOOK_DATA_DIR

STUDY = read_study(BOOK_DATA_DIR / "mixture-study-tiny.json")
BENCH = load_bench(BOOK_DATA_DIR / "bench-cpu-seed-lean.json")


def test_the_answer_is_chapter_11s_paired_verdict_and_the_benchmarks_peaks() -> None:
    answer = parts_answer(STUDY, BENCH)
    mixed = {arm: entry["mixed"] for arm, entry in STUDY["arms"].items()}
    mixture = mixed[answer.mixture_arm]
    assert answer.vs_dense == paired_difference(mixture, mixed["dense"])
    assert answer.at_equal_tokens == answer.vs_dense.verdict == "higher"
    assert answer.at_equal_flops == paired_difference(mixture, mixed["dense_eqflops"]).verdict
    assert answer.reference_expert_peak_mb == BENCH["results"]["expert"]["memory"]["peak"] / 1e6
    assert answer.n_seeds == len(STUDY["settings"]["seeds"]) and answer.mixture_loss_std > 0


def test_a_benchmark_whose_steps_differ_in_more_than_what_trains_is_refused() -> None:
    """Negative control: the memory ratio is only quoted for a one-difference comparison."""
    unfair = copy.deepcopy(BENCH)
    unfair["results"]["full"]["trunk_dropout"] = not unfair["results"]["expert"]["trunk_dropout"]
    with pytest.raises(ValueError, match="differs from its expert step"):
        parts_answer(STUDY, unfair)


def test_amdahls_bound_counts_phase_1_and_mixing_as_serial() -> None:
    from modularforge.chapters.ch00b_front_answer import parallel_answer

    phases = STUDY["arms"]["mix_shared"]["phases"]
    experts = next(p["flops"] for p in phases if p["phase"].startswith("experts"))
    total = sum(p["flops"] for p in phases)
    answer = parallel_answer(STUDY, "mix_shared")
    assert answer.serial_share == pytest.approx(1 - experts / total)
    assert answer.ranks == 3
    assert answer.bound == pytest.approx(1 / (answer.serial_share + (1 - answer.serial_share) / 3))
    assert 1 < answer.bound < 3  # more than one rank helps, but far less than 3x


def test_a_study_with_nothing_serial_would_scale_with_the_ranks() -> None:
    """Negative control: with phase 1 and mixing removed, the bound is the rank count."""
    from modularforge.chapters.ch00b_front_answer import parallel_answer

    study = copy.deepcopy(STUDY)
    arm = study["arms"]["mix_shared"]
    arm["phases"] = [p for p in arm["phases"] if p["phase"].startswith("experts")]
    assert parallel_answer(study, "mix_shared").bound == pytest.approx(3)

"""Seed studies: summaries recomputed from per-seed values, verdicts that can say both things."""

import json

import pytest

from modularforge.cli.main import main
from modularforge.pipeline.seed_study import seed_verdict, summarize_runs, verdicts_against


def test_seed_study_uses_the_one_spread_module():
    from modularforge.measure import spread as spread_module
    from modularforge.pipeline import seed_study

    assert seed_study.spread is spread_module.spread
    assert seed_study.Spread is spread_module.Spread


def test_seed_verdict_says_better_only_when_the_ranges_separate():
    verdict = seed_verdict([100.0, 110.0, 90.0], [120.0, 131.0, 111.0])
    assert verdict.verdict == "better" and verdict.gaps == (-20.0, -21.0, -21.0)
    assert verdict.mean_gap == pytest.approx(-62 / 3)
    assert seed_verdict([120.0, 131.0, 111.0], [100.0, 110.0, 90.0]).verdict == "worse"


@pytest.mark.parametrize(
    "a, b",
    [
        ([100.0, 110.0, 90.0], [101.0, 108.0, 91.0]),  # seeds disagree on the direction
        # Every seed of a beats its own pair (the old paired rule said "better"), but
        # a's worst seed is above b's best: the ranges overlap.
        ([100.0, 120.0, 140.0], [105.0, 125.0, 145.0]),
    ],
)
def test_seed_verdict_is_inconclusive_when_the_spreads_overlap(a, b):
    assert seed_verdict(a, b).verdict == "inconclusive"


def test_seed_verdict_needs_three_seeds_and_equal_lengths():
    with pytest.raises(ValueError, match=">= 3 seeds"):
        seed_verdict([1.0, 2.0], [3.0, 4.0])
    with pytest.raises(ValueError, match="same seeds"):
        seed_verdict([1.0, 2.0, 3.0], [3.0, 4.0])


def test_verdicts_are_recomputed_from_the_stored_per_seed_numbers():
    """The shipped seed study: every verdict follows from its per-seed values alone."""
    from modularforge.repo_paths import BOOK_DATA_DIR

    study = json.loads((BOOK_DATA_DIR / "pipeline-tiny-seeds.json").read_text())
    verdicts = verdicts_against(study, "dense")
    for name, verdict in verdicts.items():
        values = study["rows"][name]["perplexity"]["mixed"]["per_seed"]
        dense = study["rows"]["dense"]["perplexity"]["mixed"]["per_seed"]
        expected = (
            "better" if max(values) < min(dense) else "worse" if min(values) > max(dense)
            else "inconclusive"
        )  # fmt: skip
        assert verdict.verdict == expected, name


def _run(tmp_path, seed, dense, moe, settings=None):
    run = tmp_path / f"seed{seed}"
    run.mkdir()
    rows = [
        {"name": "dense", "training_tokens": 10, "parameters": 5, "mixed": dense,
         "domains": {"a": dense - 1, "b": dense + 1}},
        {"name": "MoE top-1", "training_tokens": 10, "parameters": 9, "mixed": moe,
         "domains": {"a": moe - 1, "b": moe + 1}},
    ]  # fmt: skip
    manifest = {
        "settings": {"steps": 3, "seed": seed, **(settings or {})},
        "phases": {"evaluation": {"comparison": {"rows": rows, "system_tokens": 10}}},
    }
    (run / "manifest.json").write_text(json.dumps(manifest))
    return run


def test_summary_recomputes_mean_and_spread_per_row_and_column(tmp_path):
    runs = [_run(tmp_path, s, d, m) for s, d, m in [(0, 170, 350), (1, 172, 340), (2, 168, 360)]]
    summary = summarize_runs(runs)
    assert summary["seeds"] == [0, 1, 2]
    dense = summary["rows"]["dense"]["perplexity"]
    assert dense["mixed"]["per_seed"] == [170, 172, 168]
    assert dense["mixed"]["mean"] == pytest.approx(170)
    assert dense["mixed"]["std"] == pytest.approx(2.0)
    assert dense["b"]["mean"] == pytest.approx(171)
    assert verdicts_against(summary, "dense")["MoE top-1"].verdict == "worse"


def test_summary_refuses_runs_that_differ_in_more_than_the_seed(tmp_path):
    runs = [_run(tmp_path, 0, 1, 2), _run(tmp_path, 1, 1, 2, settings={"steps": 4})]
    with pytest.raises(ValueError, match="more than the seed.*steps"):
        summarize_runs(runs)
    with pytest.raises(ValueError, match="at least 2 runs"):
        summarize_runs(runs[:1])


def test_cli_writes_the_summary_with_its_command(tmp_path, capsys):
    runs = [_run(tmp_path, s, 170 + s, 350 - s) for s in range(3)]
    out = tmp_path / "study.json"
    assert main(["pipeline-seeds", *map(str, runs), "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["command"].startswith("python -m modularforge pipeline-seeds")
    assert data["rows"]["MoE top-1"]["perplexity"]["mixed"]["per_seed"] == [350, 349, 348]
    assert "MoE top-1" in capsys.readouterr().out
    assert (
        main(["pipeline-seeds", str(tmp_path / "nothing"), str(runs[0]), "--json", str(out)]) == 2
    )


def test_summary_table_prints_mean_and_std_of_every_cell(tmp_path):
    from modularforge.pipeline.seed_study import summary_table

    runs = [_run(tmp_path, s, d, m) for s, d, m in [(0, 170, 350), (1, 172, 340), (2, 168, 360)]]
    text = summary_table(summarize_runs(runs))
    lines = text.splitlines()
    assert lines[0].split() == ["tokens", "params", "mixed", "a", "b"]
    dense = next(line for line in lines if line.startswith("dense"))
    assert "170.0 ± 2.0" in dense and "169.0 ± 2.0" in dense and "171.0 ± 2.0" in dense
    moe = next(line for line in lines if line.startswith("MoE top-1"))
    assert "350.0 ± 10.0" in moe


def test_seed_plot_draws_every_seed_and_the_reference_line(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from modularforge.pipeline.seed_study import plot_seed_study

    runs = [_run(tmp_path, s, d, m) for s, d, m in [(0, 170, 350), (1, 172, 340), (2, 168, 360)]]
    ax = plot_seed_study(summarize_runs(runs))
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == ["dense", "MoE top-1"]
    dots = [c for c in ax.collections if c.get_offsets().shape[0] == 3]
    assert sorted(dots[1].get_offsets()[:, 0].tolist()) == [340, 350, 360]
    assert ax.get_lines()[-1].get_xdata()[0] == pytest.approx(170)  # the dense mean
    assert "log" in ax.get_xlabel()

"""Chapter 6's charts and timing verdicts: reference lines, the zoomed panel, legends, noise.

The charts are drawn from the stored benchmark files (no run needed); the timing
helpers are checked on small hand-made results whose answers are known.
"""

from __future__ import annotations

import copy
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pytest
from matplotlib.figure import Figure

from modularforge.measure.memory import DOC_BUDGET_MB, DOC_UNFROZEN_MB, MB
from modularforge.plots import bench_plots
from modularforge.repo_paths import BOOK_DATA_DIR

LEAN_ARMS = ["expert", "full", "full-math", "full-dropout"]


@pytest.fixture(scope="module")
def main_run() -> dict[str, Any]:
    return bench_plots.load_bench(BOOK_DATA_DIR / "bench-cpu-seed-4x256.json")


@pytest.fixture(scope="module")
def ladder() -> dict[str, Any]:
    return bench_plots.load_ladder(BOOK_DATA_DIR / "lean-ladder-cpu-seed.json")


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def legend_hits(fig: Figure) -> list[str]:
    """Every data artist (bar, line, marker, annotation) that a legend of `fig` covers."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None] + fig.legends
    assert legends, "the figure has no legend to check"
    hits = []
    for legend in legends:
        box = legend.get_window_extent(renderer)
        for ax in fig.axes:
            for artist in [*ax.patches, *ax.lines, *ax.collections, *ax.texts]:
                extent = artist.get_window_extent(renderer)
                if extent.width + extent.height > 0 and box.overlaps(extent):
                    hits.append(f"{ax.get_title()!r}: {artist}")
    return hits


def reference_levels(ax: Any) -> set[float]:
    """The y values of the horizontal lines labelled as the document's figures."""
    return {line.get_ydata()[0] for line in ax.lines if line.get_label().startswith("document:")}


def test_legend_check_catches_a_legend_over_the_bars(main_run: dict[str, Any]) -> None:
    """Negative control: the same chart with its legend moved onto the bars fails the check."""
    ax = bench_plots.plot_memory(main_run)
    ax.legend(loc="center")
    assert legend_hits(ax.figure)


@pytest.mark.parametrize(
    "draw",
    [
        lambda run, ladder: bench_plots.plot_memory(run).figure,
        lambda run, ladder: bench_plots.plot_memory_zoomed(run, LEAN_ARMS)[0].figure,
        lambda run, ladder: bench_plots.plot_step_times(run).figure,
        lambda run, ladder: bench_plots.plot_ratios(run).figure,
        lambda run, ladder: bench_plots.plot_ladder(ladder).figure,
    ],
    ids=["memory", "memory-zoomed", "step-times", "ratios", "ladder"],
)
def test_legends_cover_no_data(draw, main_run: dict[str, Any], ladder: dict[str, Any]) -> None:
    assert legend_hits(draw(main_run, ladder)) == []


def test_memory_chart_marks_the_documents_205_and_516_mb(main_run: dict[str, Any]) -> None:
    ax = bench_plots.plot_memory(main_run)
    assert reference_levels(ax) == {DOC_BUDGET_MB, DOC_UNFROZEN_MB}
    assert ax.get_ylim()[1] > DOC_UNFROZEN_MB  # both lines inside the plot


def test_zoomed_panel_shows_only_the_small_bars_on_their_own_scale(
    main_run: dict[str, Any],
) -> None:
    run = copy.deepcopy(main_run)
    run["results"]["baseline"]["memory"]["peak"] *= 10  # a plain step ten times the others
    ax_all, ax_zoom = bench_plots.plot_memory_zoomed(run, ["expert", "full"])
    assert len(ax_all.get_xticks()) == len(run["results"])
    assert len(ax_zoom.get_xticks()) == 2
    peaks = [run["results"][name]["memory"]["peak"] / MB for name in ("expert", "full")]
    assert ax_zoom.get_ylim()[1] == pytest.approx(max(max(peaks) * 1.25, DOC_UNFROZEN_MB * 1.1))
    assert ax_zoom.get_ylim()[1] > DOC_UNFROZEN_MB  # both document lines in view
    assert ax_zoom.get_ylim()[1] < ax_all.get_ylim()[1] / 5
    assert reference_levels(ax_zoom) == {DOC_BUDGET_MB, DOC_UNFROZEN_MB}
    labels = [text.get_text() for text in ax_zoom.texts]
    assert labels == [f"{peak:,.1f}" for peak in peaks]  # peaks to a tenth of a MB


def test_zoomed_panel_refuses_unknown_configurations(main_run: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="no-such-arm"):
        bench_plots.plot_memory_zoomed(main_run, ["expert", "no-such-arm"])
    with pytest.raises(ValueError, match="zoom must name"):
        bench_plots.plot_memory_zoomed(main_run, [])


# --- timing against FLOPs ---------------------------------------------------------------------


def timed(a: list[float], b: list[float], flops_a: int = 75, flops_b: int = 100) -> dict:
    """A two-arm result with the fields the timing helpers read."""

    def row(times: list[float], flops: int) -> dict[str, Any]:
        ordered = sorted(times)
        median = ordered[len(ordered) // 2]
        return {"step_times_s": times, "min_s": min(times), "median_s": median, "flops": flops}

    return {"results": {"expert": row(a, flops_a), "full": row(b, flops_b)}}


def test_paired_ratios_cancel_load_shared_by_a_round() -> None:
    # Round 2 ran under three times the load, for both arms alike.
    result = timed([0.75, 2.25, 0.8], [1.0, 3.0, 1.0])
    assert bench_plots.paired_time_ratios(result) == pytest.approx([0.75, 0.75, 0.8])
    check = bench_plots.time_vs_flops(result)
    assert check["flop_ratio"] == 0.75
    assert check["min_ratio"] == 0.75
    assert check["gap"] == pytest.approx(0.0)
    assert (check["low"], check["high"]) == pytest.approx((0.75, 0.8))
    assert check["paired_median"] == pytest.approx(0.75)
    assert check["covers"] is True


@pytest.mark.parametrize(
    ("expert", "full", "label", "words"),
    [
        ([0.7, 0.8], [1.0, 1.0], "holds", "include the FLOP ratio"),
        ([0.6, 0.7], [1.0, 1.0], "holds, beyond the FLOPs", "lie below the FLOP ratio"),
        ([0.8, 0.9], [1.0, 1.0], "holds in part", "lie above the FLOP ratio"),
        ([0.7, 1.1], [1.0, 1.0], "inconclusive", "include the FLOP ratio"),
    ],
)
def test_time_verdicts(expert: list[float], full: list[float], label: str, words: str) -> None:
    result = timed(expert, full)
    assert bench_plots.time_verdict_label(result) == label
    assert words in bench_plots.time_verdict(result)
    assert "of 0.750" in bench_plots.time_verdict(result)


def test_paired_ratios_need_matching_rounds() -> None:
    with pytest.raises(ValueError, match="same, non-zero number of timed steps"):
        bench_plots.paired_time_ratios(timed([0.7, 0.8], [1.0]))


def test_speedup_words() -> None:
    assert bench_plots.speedup_words(1.676) == "1.68x the throughput"
    assert bench_plots.speedup_words(0.9) == "0.90x the throughput (slower)"


@pytest.mark.parametrize(
    ("expert", "full", "direction"),
    [
        ([0.7, 0.9], [1.0, 1.0], "faster"),
        ([1.1, 1.3], [1.0, 1.0], "slower"),
        ([0.9, 1.2], [1.0, 1.0], "inconclusive"),  # one round each way: noise covers it
    ],
)
def test_time_direction_reads_every_round(
    expert: list[float], full: list[float], direction: str
) -> None:
    assert bench_plots.time_direction(timed(expert, full), "expert", "full") == direction


def test_pair_table_has_one_row_per_difference(main_run: dict[str, Any]) -> None:
    rows = bench_plots.pair_time_rows(main_run)
    assert [row["a / b"] for row in rows] == [
        f"{a} / {b}" for a, b in bench_plots.ONE_DIFFERENCE_PAIRS
    ]
    results = main_run["results"]
    for row, (a, b) in zip(rows, bench_plots.ONE_DIFFERENCE_PAIRS, strict=True):
        assert row["FLOPs"] == results[a]["flops"] / results[b]["flops"]
        assert row["fastest"] == results[a]["min_s"] / results[b]["min_s"]
        assert row["rounds: low"] <= row["median"] <= row["high"]
    # the attention path changes no FLOP count (attention counted alike on both paths)
    assert rows[1]["FLOPs"] == 1.0
    assert "full-dropout / baseline" in bench_plots.pair_time_table(main_run)


def test_every_verdict_and_direction_has_words() -> None:
    """The chapter prints these sentences for whatever label the stored run gets."""
    labels = set()
    for expert in ([0.7, 0.8], [0.6, 0.7], [0.8, 0.9], [0.7, 1.1]):
        labels.add(bench_plots.time_verdict_label(timed(expert, [1.0, 1.0])))
    assert labels == set(bench_plots.VERDICT_MEANINGS)
    directions = {
        bench_plots.time_direction(timed(expert, [1.0, 1.0]), "expert", "full")
        for expert in ([0.7, 0.9], [1.1, 1.3], [0.9, 1.2])
    }
    assert directions == set(bench_plots.DIRECTION_MEANINGS)


def _ladder_with(label: str, peak_mb: float, ratio: float | None) -> dict[str, Any]:
    rung = {"label": label, "peak": peak_mb * MB, "time_over_plain_median": ratio}
    return {"rungs": {"expert": [rung]}}


@pytest.mark.parametrize(
    ("peak_mb", "ratio", "memory_met", "time_met"),
    [(210.0, 1.2, True, True), (216.0, 1.2, False, True), (210.0, 1.3, True, False)],
)
def test_lean_goal_check_reads_the_rung_against_both_goals(
    peak_mb: float, ratio: float, memory_met: bool, time_met: bool
) -> None:
    check = bench_plots.lean_goal_check(_ladder_with("selective recomputation", peak_mb, ratio))
    assert check is not None
    assert check["peak MB"] == pytest.approx(peak_mb)
    assert check["time / plain"] == ratio
    assert (check["memory goal met"], check["time goal met"]) == (memory_met, time_met)


def test_lean_goal_check_says_none_for_a_ladder_without_the_rung() -> None:
    assert bench_plots.lean_goal_check(_ladder_with("+ fused AdamW", 200.0, 1.0)) is None
    assert bench_plots.lean_goal_check(_ladder_with("selective recomputation", 200.0, 1.0))


def test_lean_goal_check_refuses_a_rung_without_interleaved_times() -> None:
    with pytest.raises(ValueError, match="interleaved"):
        bench_plots.lean_goal_check(_ladder_with("selective recomputation", 200.0, None))

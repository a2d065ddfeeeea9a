"""`python -m modularforge ladder`: one saver at a time, each rung exact and measured."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import matplotlib
import pytest

matplotlib.use("Agg")

from modularforge.cli.main import main  # noqa: E402
from modularforge.lean.step import LEAN_EXPERT, LeanOptions  # noqa: E402
from modularforge.measure.ladder import (  # noqa: E402
    format_ladder,
    ladder_rows,
    lean_ladder,
    run_ladder,
    split_expert_rows,
)
from modularforge.measure.memory import MB, memory_budget  # noqa: E402
from modularforge.measure.peak import measure_peak  # noqa: E402
from modularforge.model.config import ModelConfig  # noqa: E402
from modularforge.plots import bench_plots  # noqa: E402

TINY = ModelConfig.tiny().replace(dropout=0.1, expert_dropout=0.1)
BATCH, SEQ = 8, 128  # activations dominate, as at the seed preset


@pytest.fixture(scope="module")
def ladder_json(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The command line, run as a reader runs it: in a fresh process."""
    out = tmp_path_factory.mktemp("ladder") / "ladder.json"
    argv = ["ladder", "--preset", "tiny", "--batch-size", str(BATCH), "--seq-len", str(SEQ)]
    argv += ["--micro-batch-size", "1", "--loss-chunk", "8", "--rounds", "2", "--json", str(out)]
    result = subprocess.run(
        [sys.executable, "-m", "modularforge", *argv], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    assert "expert training (static floor" in result.stdout and f"wrote {out}" in result.stdout
    return json.loads(out.read_text())


def test_rungs_add_one_saver_at_a_time() -> None:
    rungs = lean_ladder(2, 16)
    assert [r.label for r in rungs] == [
        "plain step",
        "+ micro-batches of 2",
        "+ loss in chunks of 16 positions",
        "+ checkpointed layers",
        "+ hand-written expert backward",
        "+ fused AdamW",
        "+ one-buffer loss, chunks of 128",
        "selective recomputation",
    ]
    assert rungs[0].options == LeanOptions()
    assert rungs[5].options == LeanOptions(2, 16, True, True)
    assert rungs[6].options == LeanOptions(2, 128, True, True, one_buffer_loss=True)
    assert rungs[7].options == LeanOptions(
        2, 128, recompute_expert=True, one_buffer_loss=True, selective_attention=True
    )
    assert [r.optimizer for r in rungs] == ["adamw"] * 5 + ["adamw-fused"] * 3
    assert [r.modelled for r in rungs] == [True, False, False, False, True, True, True, False]
    # With the defaults, the sixth rung is the book's LEAN_EXPERT setting.
    assert lean_ladder()[5].options == LEAN_EXPERT
    # The ladder splits the selective rung's expert backward in two pieces of a micro-batch.
    split = split_expert_rows(rungs, 64)
    assert split[7].options.expert_rows == 64 and split[:7] == rungs[:7]


def test_json_schema_and_command(ladder_json: dict[str, Any]) -> None:
    assert ladder_json["command"].startswith("python -m modularforge ladder --preset tiny")
    assert set(ladder_json["rungs"]) == {"expert", "full"}
    assert (
        ladder_json["static_floor"]["expert"]
        == memory_budget(ModelConfig.tiny(), BATCH, SEQ, frozen=True).static
    )
    for rungs in ladder_json["rungs"].values():
        assert len(rungs) == 8
        for rung in rungs:
            assert set(rung) == {
                "label",
                "options",
                "optimizer",
                "peak",
                "analytic_peak",
                "linear_flops",
                "step_times_s",
                "min_s",
                "step_time_s",
                "time_over_plain_min",
                "time_over_plain_median",
                "first_loss",
            }
            assert rung["peak"] > 0 and len(rung["step_times_s"]) == ladder_json["rounds"] == 2
            assert rung["min_s"] == min(rung["step_times_s"]) <= rung["step_time_s"]
            assert rung["time_over_plain_min"] == rung["min_s"] / rungs[0]["min_s"]
        assert rungs[0]["time_over_plain_median"] == 1.0
        assert rungs[7]["options"]["expert_rows"] == SEQ // 2  # micro-batches of 1 sequence


def test_every_rung_takes_the_same_first_step(ladder_json: dict[str, Any]) -> None:
    # The tiny preset has no dropout, so even the plain step, which would draw its masks
    # for the whole batch at once, takes exactly the micro-batched steps' first step.
    assert ladder_json["config"]["dropout"] == ladder_json["config"]["expert_dropout"] == 0.0
    for rungs in ladder_json["rungs"].values():
        first = rungs[0]["first_loss"]
        for rung in rungs[1:]:
            assert rung["first_loss"] == pytest.approx(first, rel=1e-5), rung["label"]


def test_the_savers_cut_the_peak_and_the_analytic_model_follows(
    ladder_json: dict[str, Any],
) -> None:
    for training, rungs in ladder_json["rungs"].items():
        floor = ladder_json["static_floor"][training]
        peaks = [rung["peak"] for rung in rungs]
        assert peaks[1] < peaks[0], training  # micro-batches: 1/8 of the activations
        assert peaks[2] < peaks[1], training  # chunks: no (B, T, vocab) logits
        assert min(peaks) == peaks[5] or peaks[5] <= 1.02 * min(peaks[:6]), training
        assert peaks[7] < peaks[2], training  # selective recomputation still far below
        assert min(peaks) > floor  # never below the static tensors
        for rung in rungs:
            if rung["analytic_peak"] is not None:
                assert rung["analytic_peak"] == pytest.approx(rung["peak"], rel=0.05)
        assert [r["analytic_peak"] is None for r in rungs] == [
            False,
            True,
            True,
            True,
            False,
            False,
            False,
            True,
        ]


def test_recomputation_is_paid_in_flops_not_bytes(ladder_json: dict[str, Any]) -> None:
    for rungs in ladder_json["rungs"].values():
        flops = [rung["linear_flops"] for rung in rungs]
        assert flops[0] == flops[1] == flops[2]  # micro-batches and chunks: exact, no extra work
        assert flops[3] > flops[2]  # checkpointed layers replay the forward
        assert flops[2] < flops[4] < flops[3]  # the expert replays fc1 only, attention its QKV
        assert flops[5] == flops[4]  # the optimizer is not a matmul
        assert flops[6] == flops[5]  # the one-buffer loss runs the same matmuls
        assert flops[2] < flops[7] < flops[6]  # selective: no QKV replay, the expert's fc1 still


def test_a_rung_matches_measure_peak() -> None:
    rung = lean_ladder(1, 8)[4]
    result = run_ladder(TINY, 2, 16, rungs=(rung,), trainings=("expert",), rounds=1)
    measured = result["rungs"]["expert"][0]["peak"]
    again = measure_peak(TINY, 2, 16, frozen=True, options=rung.options, optimizer=rung.optimizer)
    assert measured == pytest.approx(again, rel=0.02)  # the same step, measured the same way


def test_rows_table_and_chart(ladder_json: dict[str, Any], tmp_path: Path) -> None:
    rows = ladder_rows(ladder_json, "expert")
    rungs = ladder_json["rungs"]["expert"]
    assert rows[0]["saved MB"] is None
    assert rows[1]["saved MB"] == (rungs[0]["peak"] - rungs[1]["peak"]) / MB
    assert rows[2]["peak / floor"] == rungs[2]["peak"] / ladder_json["static_floor"]["expert"]
    text = format_ladder(ladder_json)
    assert "expert training" in text and "full training" in text and "+ fused AdamW" in text
    table = bench_plots.ladder_table(ladder_json, "full")
    assert all(word in table.split() for word in "+ checkpointed layers".split())
    memory = bench_plots.ladder_table(ladder_json, "full", bench_plots.LADDER_MEMORY_COLUMNS)
    cost = bench_plots.ladder_table(ladder_json, "full", bench_plots.LADDER_COST_COLUMNS)
    assert "analytic MB" in memory and "GFLOP" not in memory
    assert "first loss" in cost and "peak MB" not in cost
    assert max(len(line) for line in (memory + "\n" + cost).splitlines()) <= 80  # a page's width
    ax = bench_plots.plot_ladder(ladder_json)
    assert ax.get_yscale() == "log"
    assert len(ax.patches) == 16  # 8 rungs x 2 trainings
    assert ax.get_ylabel().startswith("measured peak")
    path = tmp_path / "ladder.json"
    path.write_text(json.dumps(ladder_json))
    assert bench_plots.load_ladder(path)["batch_size"] == BATCH


def test_bad_input_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="trainings must be"):
        run_ladder(TINY, 2, 16, trainings=("half",))
    with pytest.raises(ValueError, match="max_seq_len"):
        run_ladder(TINY, 1, TINY.max_seq_len + 1)
    argv = ["ladder", "--preset", "tiny", "--batch-size", "2", "--seq-len", "8"]
    assert main([*argv, "--micro-batch-size", "0"]) == 2
    assert "micro_batch_size must be None or an int >= 1" in capsys.readouterr().err
    not_a_ladder = tmp_path / "bench.json"
    not_a_ladder.write_text(json.dumps({"results": {}}))
    with pytest.raises(ValueError, match="not a ladder result"):
        bench_plots.load_ladder(not_a_ladder)


def test_time_ratio_chart(ladder_json: dict[str, Any]) -> None:
    from modularforge.plots.roofline_plots import plot_ladder_times

    ax = plot_ladder_times(ladder_json)
    rungs = ladder_json["rungs"]["expert"]
    assert [p.get_height() for p in ax.patches] == [r["time_over_plain_median"] for r in rungs]
    assert "ratio" in ax.get_ylabel() and "rung" in ax.get_xlabel()
    assert "target: 1.25x" in ax.get_legend_handles_labels()[1]
    old = json.loads(json.dumps(ladder_json))
    del old["rungs"]["expert"][3]["time_over_plain_median"]
    with pytest.raises(ValueError, match="no interleaved times"):
        plot_ladder_times(old)

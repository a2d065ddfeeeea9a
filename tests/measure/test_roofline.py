"""The machine's matmul line: shapes, the arithmetic of the fraction, the bench's JSON, the plot."""

from __future__ import annotations

import copy
from typing import Any

import matplotlib
import pytest
import torch

matplotlib.use("Agg")

from modularforge.lean.step import LeanOptions  # noqa: E402
from modularforge.measure.bench import CONFIGURATIONS, run_bench  # noqa: E402
from modularforge.measure.roofline import (  # noqa: E402
    PASSES,
    LinearShape,
    MatmulSuite,
    linear_shapes,
    machine_line,
    matmul_flops,
    measure_machine_line,
    utilisation,
)
from modularforge.model.config import ModelConfig  # noqa: E402
from modularforge.model.trainer_model import seeded_trainer_model  # noqa: E402
from modularforge.plots.roofline_plots import plot_roofline, roofline_rows, roofline_table  # noqa: E402

TINY = ModelConfig.tiny()
pytestmark = pytest.mark.usefixtures("one_thread_per_module")


@pytest.fixture(scope="module")
def bench_result() -> dict[str, Any]:
    return run_bench(TINY, 2, 16, steps=2, warmup=0, clock="cpu")  # one thread: see pytestmark


def test_shapes_are_the_models_linears() -> None:
    seed = ModelConfig.seed()
    shapes = {s.name: (s.in_features, s.out_features, s.count) for s in linear_shapes(seed)}
    assert shapes == {
        "attention qkv": (512, 1536, 4),
        "attention proj": (512, 512, 4),
        "expert fc1": (512, 2048, 4),
        "expert fc2": (2048, 512, 4),
        "LM head (tied)": (512, 16384, 1),
    }
    # Every Linear of the model appears with its count: the mix's forward FLOPs per token
    # equal 2 x (the model's Linear weights, the tied head counted as a Linear).
    model = seeded_trainer_model(TINY, True, 0)
    linears = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    model_weights = linears + TINY.vocab_size * TINY.d_model
    assert sum(matmul_flops(1, s) * s.count for s in linear_shapes(TINY)) == 2 * model_weights


def test_suite_multiplies_the_layouts_autograd_uses() -> None:
    suite = MatmulSuite(TINY, 8)
    shape = linear_shapes(TINY)[2]  # fc1: 128 -> 512
    a, b = suite._operands[(shape.name, "forward")]
    assert (a.shape, b.shape) == ((8, 128), (128, 512)) and not b.is_contiguous()
    a, b = suite._operands[(shape.name, "weight gradient")]
    assert (a.shape, b.shape) == ((512, 8), (8, 128))
    seconds = suite.time_once()
    assert set(seconds) == {(s.name, p) for s in suite.shapes for p in PASSES}
    assert all(t > 0 for t in seconds.values())


def test_line_is_flop_weighted_over_best_times() -> None:
    shapes = (LinearShape("a", 2, 3, 2), LinearShape("b", 4, 1, 1))
    tokens = 10  # a: 120 FLOPs per matmul, b: 80
    times = {("a", p): [0.5, 1.0] for p in PASSES} | {("b", p): [3.0, 2.0] for p in PASSES}
    line = machine_line(shapes, tokens, times)
    # sum(count * FLOPs) / sum(count * best time) = (3*2*120 + 3*80) / (3*2*0.5 + 3*2.0)
    assert line["flops_per_s"] == pytest.approx((720 + 240) / (3.0 + 6.0))
    assert line["best_matmul_flops_per_s"] == pytest.approx(240.0)
    assert line["rounds"] == 2 and len(line["matmuls"]) == 6
    assert line["matmuls"][2]["m_k_n"] == [3, 10, 2]  # a's weight gradient: (out, N) x (N, in)
    with pytest.raises(ValueError, match="no timing for 'b'"):
        machine_line(shapes, tokens, {k: v for k, v in times.items() if k[0] == "a"})


def test_fraction_from_given_numbers() -> None:
    result = utilisation(flops=100_000_000_000, seconds=0.95, line_flops_per_s=170e9)
    assert result["flops_per_s"] == pytest.approx(100e9 / 0.95)
    assert result["fraction_of_line"] == pytest.approx(100e9 / 0.95 / 170e9)  # about 0.62
    with pytest.raises(ValueError, match="must be > 0"):
        utilisation(1, 0.0, 1.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tokens": 0}, "tokens must be an int >= 1"),
        ({"tokens": 4, "dtype": "float16"}, "dtype must be one of"),
        ({"tokens": 4, "dtype": "bfloat16"}, "measured on CUDA only"),
    ],
)
def test_suite_refuses_bad_input(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MatmulSuite(TINY, **kwargs)


def test_measure_machine_line_counts_rounds() -> None:
    line = measure_machine_line(TINY, 8, rounds=2, warmup=0)
    assert line["rounds"] == 2 and line["dtype"] == "float32" and line["tokens"] == 8
    assert 0 < line["flops_per_s"] <= line["best_matmul_flops_per_s"]


def test_bench_records_the_line_and_each_fraction(bench_result: dict[str, Any]) -> None:
    roofline = bench_result["roofline"]
    assert roofline["reference"] == "float32" and list(roofline["lines"]) == ["float32"]
    line = roofline["lines"]["float32"]
    assert line["tokens"] == 2 * 16 and line["rounds"] == 2
    for name in CONFIGURATIONS:
        row = bench_result["results"][name]
        for which, seconds in (("min", row["min_s"]), ("median", row["median_s"])):
            achieved = row["achieved"][which]
            assert achieved["flops_per_s"] == pytest.approx(row["flops"] / seconds)
            assert achieved["fraction_of_line"] == pytest.approx(
                row["flops"] / seconds / line["flops_per_s"]
            )


def test_cpu_clock_is_recorded_and_refused_with_two_threads(
    bench_result: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert bench_result["clock"] == "cpu"
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    with pytest.raises(ValueError, match="one intra-op thread"):
        run_bench(TINY, 2, 16, steps=1, clock="cpu")
    with pytest.raises(ValueError, match="clock must be one of"):
        run_bench(TINY, 2, 16, steps=1, clock="sundial")


def test_lean_bench_line_uses_the_micro_batch() -> None:
    result = run_bench(TINY, 2, 8, steps=1, warmup=0, lean=LeanOptions(micro_batch_size=1))
    assert result["roofline"]["lines"]["float32"]["tokens"] == 8


def test_rows_table_and_plot(bench_result: dict[str, Any]) -> None:
    rows = roofline_rows(bench_result)
    assert [r["configuration"] for r in rows[:-1]] == list(CONFIGURATIONS)
    assert rows[-1]["GFLOP/s (min)"] == pytest.approx(
        bench_result["roofline"]["lines"]["float32"]["flops_per_s"] / 1e9
    )
    assert "machine's float32 line" in roofline_table(bench_result)
    ax = plot_roofline(bench_result)
    assert "GFLOP/s" in ax.get_ylabel() and "configuration" in ax.get_xlabel()
    assert [t.get_text() for t in ax.get_xticklabels()] == list(CONFIGURATIONS)
    labels = ax.get_legend_handles_labels()[1]
    assert "machine: float32 matmul line, model shapes" in labels
    heights = [p.get_height() * 1e9 for p in ax.patches]
    expected = [
        bench_result["results"][n]["achieved"]["min"]["flops_per_s"] for n in CONFIGURATIONS
    ]
    assert heights == pytest.approx(expected)
    annotations = [t.get_text() for t in ax.texts]
    fractions = [
        f"{bench_result['results'][n]['achieved']['min']['fraction_of_line']:.2f}"
        for n in CONFIGURATIONS
    ]
    assert annotations == fractions


def test_plot_refuses_results_without_a_line(bench_result: dict[str, Any]) -> None:
    old = copy.deepcopy(bench_result)
    del old["roofline"]
    with pytest.raises(ValueError, match="predates the roofline"):
        plot_roofline(old)

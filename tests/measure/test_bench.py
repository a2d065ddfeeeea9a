"""`python -m modularforge bench`: schema, memory figures, the FLOP check, and refusals."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from modularforge.cli.bench import format_report
from modularforge.cli.main import main
from modularforge.lean.step import LeanOptions, lean_training_step
from modularforge.measure.bench import (
    CONFIGURATIONS,
    build_configuration,
    count_flops,
    flop_saving,
    make_optimizer,
    measure_lean_step,
    plain_step,
    random_batch,
    run_bench,
)
from modularforge.measure.memory import measure_training_step, memory_budget
from modularforge.model.config import ModelConfig

TINY = ModelConfig.tiny()
CATEGORIES = ("params_frozen", "params_trainable", "grads", "optimizer_state", "activations")


@pytest.fixture(scope="module")
def bench_json(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    argv = ["bench", "--preset", "tiny", "--steps", "2", "--batch-size", "2", "--seq-len", "16"]
    assert main([*argv, "--device", "cpu", "--json", str(out)]) == 0
    return json.loads(Path(out).read_text())


def test_json_schema(bench_json: dict[str, Any]) -> None:
    for key in ("command", "date", "machine", "config", "results", "ratios", "flop_check"):
        assert key in bench_json
    assert bench_json["command"].startswith("python -m modularforge bench --preset tiny")
    assert bench_json["config"] == TINY.to_dict()
    assert bench_json["date"].endswith("+00:00")  # UTC
    for key in ("platform", "processor", "cpu_count", "torch", "device_name"):
        assert key in bench_json["machine"]
    assert bench_json["machine"]["torch"] == torch.__version__
    assert list(bench_json["results"]) == list(CONFIGURATIONS)
    for row in bench_json["results"].values():
        assert len(row["step_times_s"]) == 2
        assert row["min_s"] <= row["median_s"] <= row["max_s"]
        assert row["iqr_s"] >= 0 and row["stdev_s"] >= 0
        assert row["tokens_per_s"] == pytest.approx(2 * 16 / row["median_s"])
        assert isinstance(row["flops"], int) and row["flops"] > 0
        assert row["memory"]["peak"] > row["memory"]["static"]
        assert row["step"] == "plain"
    ratios = bench_json["ratios"]
    for key in (
        "expert_over_full_peak",
        "expert_over_full_step_time_min",
        "expert_over_full_step_time_median",
        "expert_over_full_flops",
        "expert_over_baseline_tokens_per_s",
        "full_math_over_full_peak",
        "full_dropout_over_full_math_peak",
        "full_math_over_full_step_time_min",
    ):
        assert isinstance(ratios[key], float) and ratios[key] > 0
    assert set(ratios["peak_over_floor"]) == set(CONFIGURATIONS)
    assert all(value > 1 for value in ratios["peak_over_floor"].values())
    assert ratios["expert_over_full_flops"] < 1  # freezing saves FLOPs


def test_analytic_floors(bench_json: dict[str, Any]) -> None:
    rows = bench_json["results"]
    frozen = memory_budget(TINY, 2, 16, frozen=True).static
    unfrozen = memory_budget(TINY, 2, 16, frozen=False).static
    assert rows["expert"]["analytic_floor"] == frozen
    for name in ("full", "full-math", "full-dropout", "baseline"):
        assert rows[name]["analytic_floor"] == unfrozen, name
    # The measured static categories are the analytic ones exactly.
    assert rows["expert"]["memory"]["static"] == frozen
    for name in ("full", "full-math", "full-dropout"):
        assert rows[name]["memory"]["static"] == unfrozen, name


def test_the_arms_differ_in_one_setting_each(bench_json: dict[str, Any]) -> None:
    """expert -> full: freezing only; full -> full-math: the path; -> full-dropout: dropout."""
    rows = bench_json["results"]
    settings = [
        (rows[n]["trainable_parameters"] == rows[n]["parameters"], rows[n]["attention_path"],
         rows[n]["trunk_dropout"])
        for n in ("expert", "full", "full-math", "full-dropout")
    ]  # fmt: skip
    assert settings == [
        (False, "fused", False),
        (True, "fused", False),
        (True, "math", False),
        (True, "math", True),
    ]
    # The math path keeps (B, heads, T, T) probabilities that the fused kernel does not.
    assert rows["full-math"]["memory"]["activations"] > rows["full"]["memory"]["activations"]
    for name in ("expert", "full", "full-math", "full-dropout"):
        assert rows[name]["analytic_peak"] is not None, name


@pytest.mark.parametrize("name", CONFIGURATIONS)
def test_memory_equals_a_fresh_measure_training_step(bench_json: dict[str, Any], name: str) -> None:
    model = build_configuration(name, TINY, seed=0)
    optimizer, _ = make_optimizer(model)
    batch = random_batch(TINY, 2, 16, seed=0)
    plain_step(model, batch, optimizer)  # warm-up, as the bench does
    fresh = measure_training_step(model, batch, optimizer)
    stored = bench_json["results"][name]["memory"]
    for category in CATEGORIES:
        assert stored[category] == getattr(fresh, category), category


def test_flop_check_matches_the_analytic_saving(bench_json: dict[str, Any]) -> None:
    check = bench_json["flop_check"]
    assert check["matches"] is True
    # Linear terms 29,360,128 + layer 0's attention-matmul backward 4 x 2*2*16*16*128.
    assert check["expected_total"] == sum(flop_saving(TINY, 2, 16).values()) == 29_884_416
    assert check["paths_count_alike"] is True


def test_flop_saving_equals_counted_difference_at_another_shape() -> None:
    batch = random_batch(TINY, 3, 8, seed=1)
    counted = {}
    for name in ("expert", "full"):
        model = build_configuration(name, TINY)
        optimizer, _ = make_optimizer(model)
        counted[name] = sum(
            count_flops(lambda m=model, o=optimizer: plain_step(m, batch, o)).values()
        )
    n, d, v = 3 * 8, TINY.d_model, TINY.vocab_size
    # Written out once by hand: weight grads of QKV + proj per layer, of the head,
    # and layer 0's attention input grads, Linears and the four T x T matmuls.
    by_hand = TINY.n_layers * (2 * n * d * 3 * d + 2 * n * d * d) + 2 * n * d * v
    by_hand += 2 * n * d * 3 * d + 2 * n * d * d + 4 * (2 * 3 * 8 * 8 * d)
    assert counted["full"] - counted["expert"] == sum(flop_saving(TINY, 3, 8).values()) == by_hand


@pytest.mark.parametrize("full", ["full", "full-dropout"])
@pytest.mark.parametrize(
    "options",
    [
        LeanOptions(micro_batch_size=1, loss_chunk=8),
        LeanOptions(checkpoint_layers=True),
        LeanOptions(recompute_expert=True),
        LeanOptions(
            micro_batch_size=1, loss_chunk=8, checkpoint_layers=True, recompute_expert=True
        ),
        LeanOptions(1, 8, recompute_expert=True, one_buffer_loss=True, selective_attention=True),
    ],
    ids=["micro+chunk", "checkpoint", "recompute", "all", "selective"],
)
def test_flop_saving_accounts_for_checkpoint_replays(options: LeanOptions, full: str) -> None:
    config = TINY.replace(dropout=0.1, expert_dropout=0.1, n_layers=3)
    batch = random_batch(config, 2, 16, seed=2)
    counted = {}
    for name in ("expert", full):
        model = build_configuration(name, config)
        optimizer, _ = make_optimizer(model, lean=True)
        counted[name] = sum(
            count_flops(
                lambda m=model, o=optimizer: lean_training_step(m, batch, o, options)
            ).values()
        )
    dropout = full == "full-dropout"
    expected = flop_saving(config, 2, 16, options, trunk_dropout=dropout)
    assert counted[full] - counted["expert"] == sum(expected.values())
    n, d = 2 * 16, config.d_model
    replays = sum(v for k, v in expected.items() if k.startswith("replay"))
    if options.checkpoint_layers and options.recompute_expert:
        # Layer 0's QKV and attention matmuls always; every layer's output projection
        # when the full step keeps its trunk dropout.
        layer0 = 2 * n * d * 3 * d + 2 * (2 * 2 * 16 * 16 * d)
        assert replays == layer0 + (3 * 2 * n * d * d if dropout else 0)
    elif options.selective_attention:
        scores = 2 * 2 * 16 * 16 * d
        # Fused: both matmuls per replay, layer 0 in full training only; math path: one.
        assert replays == (3 * scores - 2 * 2 * scores if dropout else 2 * scores)
    else:
        assert replays == 0


def test_full_and_baseline_count_the_same_linear_flops(bench_json: dict[str, Any]) -> None:
    rows = bench_json["results"]
    assert rows["full"]["linear_flops"] == rows["baseline"]["linear_flops"]
    assert rows["full"]["parameters"] == rows["baseline"]["parameters"]
    assert rows["expert"]["trainable_parameters"] < rows["expert"]["parameters"]


def test_bf16_on_cpu_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "--preset", "tiny", "--steps", "1", "--batch-size", "1", "--seq-len", "8"]
    assert main([*argv, "--device", "cpu", "--bf16"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --bf16") and "needs a CUDA device" in err
    with pytest.raises(ValueError, match="needs a CUDA device"):
        run_bench(TINY, 1, 8, 1, device="cpu", bf16=True)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="steps"):
        run_bench(TINY, 1, 8, 0)
    with pytest.raises(ValueError, match="max_seq_len"):
        run_bench(TINY, 1, TINY.max_seq_len + 1, 1)
    with pytest.raises(ValueError, match="unknown configuration"):
        build_configuration("half", TINY)


def test_measure_lean_step_matches_the_plain_measurement() -> None:
    batch = random_batch(TINY, 2, 16, seed=0)
    plain_model = build_configuration("expert", TINY)
    plain_optimizer, _ = make_optimizer(plain_model)
    lean_model = build_configuration("expert", TINY)
    lean_optimizer, kind = make_optimizer(lean_model, lean=True)
    assert kind == "AdamW(foreach=False)"
    plain = measure_training_step(plain_model, batch, plain_optimizer)
    options = LeanOptions(micro_batch_size=1, loss_chunk=4, checkpoint_layers=True)
    lean = measure_lean_step(lean_model, batch, lean_optimizer, options)
    for category in ("params_frozen", "params_trainable", "grads", "optimizer_state"):
        assert getattr(lean, category) == getattr(plain, category)
    assert lean.activations == 0
    # At 2 x 16 tokens in micro-batches of 1, the highest moment is the fused AdamW's
    # first step: every gradient and the state it creates, no temporaries: the static
    # total exactly (tensor storages are what is counted).
    assert lean.peak >= lean.static
    assert lean.loss == pytest.approx(plain.loss, rel=1e-5)  # same first step, same loss


def test_lean_bench_uses_lean_steps_for_expert_and_full_only() -> None:
    options = LeanOptions(micro_batch_size=1, loss_chunk=8)
    result = run_bench(TINY, 2, 16, 1, lean=options, fused_adamw=True)
    rows = result["results"]
    assert [rows[n]["step"] for n in CONFIGURATIONS] == ["lean"] * 4 + ["plain"]
    assert rows["expert"]["memory"]["activations"] is None
    assert rows["baseline"]["memory"]["activations"] > 0
    assert rows["expert"]["optimizer"] == "AdamW(fused=True)"  # supported on CPU in torch 2.x
    assert result["lean"] == {
        "micro_batch_size": 1,
        "loss_chunk": 8,
        "checkpoint_layers": False,
        "recompute_expert": False,
        "one_buffer_loss": False,
        "selective_attention": False,
        "expert_rows": None,
    }
    assert result["flop_check"]["matches"] is True  # micro-batches and chunks change no FLOPs


def test_arm_table_lists_the_four_trainer_model_arms(bench_json: dict[str, Any]) -> None:
    from modularforge.plots import bench_plots

    rows = bench_plots.arm_rows(bench_json)
    assert [row["arm"] for row in rows] == ["expert", "full", "full-math", "full-dropout"]
    for row in rows:
        stored = bench_json["results"][row["arm"]]
        assert row["peak MB"] == stored["memory"]["peak"] / 1e6
        assert row["analytic peak MB"] == stored["analytic_peak"] / 1e6
        assert row["GFLOP"] == stored["flops"] / 1e9
    assert "only change" in bench_plots.arm_table(bench_json)


def test_report_prints_every_configuration_and_ratio(bench_json: dict[str, Any]) -> None:
    report = format_report(bench_json)
    for name in CONFIGURATIONS:
        assert f"\n{name}" in report
    assert "expert / full peak memory" in report
    assert "(match)" in report


# --- bench_plots: the chapter's tables and charts ---------------------------------------------


def test_tables_carry_the_json_values(bench_json: dict[str, Any]) -> None:
    from modularforge.plots import bench_plots

    memory = {row["configuration"]: row for row in bench_plots.memory_rows(bench_json)}
    expert = bench_json["results"]["expert"]
    assert memory["expert"]["peak"] == expert["memory"]["peak"] / 1e6
    assert memory["expert"]["peak/floor"] == expert["peak_over_floor"]
    times = {row["configuration"]: row for row in bench_plots.time_rows(bench_json)}
    assert times["full"]["median s"] == bench_json["results"]["full"]["median_s"]
    ratios = bench_plots.ratio_rows(bench_json)
    assert len(ratios) == 9 + len(CONFIGURATIONS)
    assert ratios[0]["value"] == bench_json["ratios"]["expert_over_full_peak"]
    assert "exact match: True" in bench_plots.flop_check_table(bench_json)
    assert bench_json["command"] in bench_plots.machine_summary(bench_json)


def test_load_bench_refuses_other_json(tmp_path: Path) -> None:
    from modularforge.plots.bench_plots import load_bench

    path = tmp_path / "other.json"
    path.write_text(json.dumps({"results": {"expert": {}}}))
    with pytest.raises(ValueError, match="full"):
        load_bench(path)


def test_memory_chart_stacks_up_to_the_peak(bench_json: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from modularforge.plots.bench_plots import plot_memory, plot_ratios, plot_step_times

    ax = plot_memory(bench_json)
    tops: dict[float, float] = {}
    for patch in ax.patches:
        x = round(patch.get_x() + patch.get_width() / 2, 6)
        tops[x] = max(tops.get(x, 0.0), patch.get_y() + patch.get_height())
    expected = []
    for row in bench_json["results"].values():
        memory = row["memory"]
        categories = memory["static"] + memory["activations"]
        expected.append(max(memory["peak"], categories) / 1e6)  # grey tops up to the peak
    assert [tops[x] for x in sorted(tops)] == pytest.approx(expected)
    ratio_ax = plot_ratios(bench_json)
    widths = [patch.get_width() for patch in ratio_ax.patches]
    assert widths[0] == bench_json["ratios"]["expert_over_full_flops"]
    time_ax = plot_step_times(bench_json)
    assert [p.get_height() for p in time_ax.patches] == [
        row["median_s"] for row in bench_json["results"].values()
    ]
    plt.close("all")

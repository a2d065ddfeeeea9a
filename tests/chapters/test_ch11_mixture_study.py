"""Tests for modularforge.chapters.ch11_mixture_study: equal-token settings, identical windows for every arm,
verdicts recomputed with the book's rule, and the stored study's own bookkeeping."""

from __future__ import annotations

import json

import pytest
import torch

from modularforge.chapters.ch11_mixture_report import study_table
from modularforge.chapters.ch11_mixture_study import (
    ARMS,
    MODULAR,
    MixtureStudySettings,
    _domain_windows,
    _settings_dict,
    arm_labels,
    dense_eqflops_steps,
    domain_losses,
    read_study,
    routing_fractions,
    study_verdicts,
    write_study,
)
from modularforge.measure.mixture_accounting import phase_step_flops
from modularforge.mixture.routing import build_mixture
from modularforge.model.config import ModelConfig
from modularforge.model.expert import build_expert
from modularforge.model.shared import SharedComponents
from modularforge.model.trainer_model import seeded_trainer_model
from modularforge.training.data import load_mixed
from modularforge.training.train import evaluate_validation

CONFIG = ModelConfig.tiny()

pytestmark = pytest.mark.usefixtures("one_thread_per_module")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"seeds": (0, 1)}, "needs >= 3 distinct seeds"),
        ({"seeds": (0, 0, 1)}, "needs >= 3 distinct seeds"),
        ({"budget_steps": 999}, "must equal budget_steps"),
        ({"routing": "top3"}, "routing must be"),
        ({"shared_trainable": "router"}, "shared_trainable must be"),
    ],
)
def test_settings_refuse_unequal_budgets_and_too_few_seeds(changes, message):
    with pytest.raises(ValueError, match=message):
        MixtureStudySettings(**changes)


def test_default_budget_is_split_exactly():
    s = MixtureStudySettings()
    assert s.phase1_steps + len(s.domains) * s.expert_steps + s.mixing_steps == s.budget_steps
    assert s.tokens_per_step == 16 * 64


def test_per_domain_mean_is_the_balanced_mixed_validation():
    mixed = load_mixed(CONFIG.vocab_size)
    model = seeded_trainer_model(CONFIG, seed=1)
    windows = _domain_windows(mixed, 64, 48)
    assert {name: len(w[0]) for name, w in windows.items()} == dict.fromkeys(mixed.val_parts, 48)
    losses = domain_losses(model, windows, 16)
    # 48 windows per domain = 9 batches of 16 in the balanced stream (ceil(9 * 16 / 3) = 48).
    balanced = evaluate_validation(model, mixed, 16, 64, max_batches=9)
    assert sum(losses.values()) / 3 == pytest.approx(balanced, rel=1e-6)
    assert len(set(losses.values())) == 3  # the domains really differ


def synthetic_study(shift: float) -> dict:
    arms = {}
    for k, arm in enumerate(ARMS):
        base = 5.0 + 0.1 * k + (shift if arm == "mix_shared" else 0.0)
        values = [base, base + 0.01, base + 0.02]
        arms[arm] = {"label": ARMS[arm], "mixed": values, "steps": 900,
                     "domains": {d: values for d in ("english", "licenses", "python")}}  # fmt: skip
    return {"format": "modularforge-mixture-study",
            "settings": _settings_dict(MixtureStudySettings()), "arms": arms}  # fmt: skip


@pytest.mark.parametrize(("shift", "expected"), [(-1.0, "lower"), (0.0, "higher")])
def test_verdicts_follow_the_range_rule(shift, expected):
    verdicts = study_verdicts(synthetic_study(shift))
    assert verdicts["mix_shared vs dense"] == expected
    assert verdicts["phase1 vs dense"] == "higher"
    # fresh_oracle is listed before branched_oracle, so it is lower in the synthetic study.
    assert verdicts["branched vs fresh on python"] == "higher"
    # dense_eqflops is listed last, so every modular arm is lower than it here
    assert [verdicts[f"{arm} vs dense_eqflops"] for arm in MODULAR] == ["lower"] * len(MODULAR)


def test_equal_flops_verdicts_only_where_the_study_has_the_arm():
    study = synthetic_study(0.0)
    del study["arms"]["dense_eqflops"]
    assert not any("dense_eqflops" in name for name in study_verdicts(study))


def test_table_rows_carry_tokens_and_spread():
    rows = study_table(synthetic_study(0.0))
    assert [r["arm"] for r in rows] == list(ARMS)
    assert rows[0]["mixed (nats)"] == "5.010 ± 0.010"
    assert rows[0]["perplexity"] == "149.9 ± 1.5"  # exp of each seed, then mean ± std
    assert rows[0]["tokens"] == 1000 * 16 * 64
    eq = rows[-1]
    assert eq["arm"] == "dense_eqflops" and eq["tokens"] == 900 * 16 * 64
    assert eq["flops"] == 900 * phase_step_flops(ModelConfig.tiny(), 16, 64, "dense")
    assert {r["arm"]: r["params"] for r in rows}["mix_shared"] == 1_451_784


def test_dense_at_equal_flops_fits_in_the_oracle_arms_flops():
    s = MixtureStudySettings()
    steps = dense_eqflops_steps(s)
    dense_step = phase_step_flops(CONFIG, 16, 64, "dense")
    expert_step = phase_step_flops(CONFIG, 16, 64, "expert")
    oracle = s.phase1_steps * dense_step + 3 * s.expert_steps * expert_step
    assert steps * dense_step <= oracle < (steps + 1) * dense_step
    assert s.phase1_steps < steps < s.budget_steps


def test_arm_labels_name_the_routing_that_ran():
    labels = arm_labels({"routing": "top2", "generalist": False})
    assert labels["mix_router"].startswith("branched, top2 routing")
    assert arm_labels({}) == ARMS  # studies stored before these settings: soft + generalist
    assert arm_labels({"shared_trainable": "all"})["mix_shared"].endswith(
        "everything, experts included"
    )


def test_routing_fractions_sum_to_one_and_follow_a_forced_router():
    torch.manual_seed(0)
    moe = build_mixture(SharedComponents(CONFIG), [build_expert(CONFIG) for _ in range(3)], "top2")
    inputs = torch.randint(0, CONFIG.vocab_size, (5, 16))
    windows = {"a": (inputs, inputs), "b": (inputs[:2], inputs[:2])}
    fractions = routing_fractions(moe, windows, batch_size=2)
    for per_layer in fractions.values():
        assert len(per_layer) == CONFIG.n_layers
        for row in per_layer:
            assert sum(row) == pytest.approx(1.0) and len(row) == 3
    with torch.no_grad():
        moe.routers[1].linear.bias.copy_(torch.tensor([0.0, 0.0, 50.0]))
    forced = routing_fractions(moe, windows, batch_size=4)
    assert forced["a"][1] == [0.0, 0.0, 1.0]
    assert forced["a"][0] != [0.0, 0.0, 1.0]  # layer 0's router was not forced


def test_write_and_read_round_trip_and_refuse_other_formats(tmp_path):
    path = write_study(synthetic_study(0.0), tmp_path / "s.json", "python -m x")
    study = read_study(path)
    assert study["command"] == "python -m x"
    (tmp_path / "bad.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="is not a modularforge-mixture-study file"):
        read_study(tmp_path / "bad.json")


def test_plots_show_every_seed_and_every_memory_row():
    import matplotlib

    matplotlib.use("Agg")
    from modularforge.chapters.ch11_mixture_report import plot_mixing_memory, plot_mixture_study

    ax = plot_mixture_study(synthetic_study(0.0))
    points = sum(len(c.get_offsets()) for c in ax.collections)
    assert points == 3 * len(ARMS)
    assert "nats" in ax.get_xlabel()
    memory = {"preset": "tiny", "batch_size": 16, "seq_len": 64,
              "rows": {"a": {"peak_bytes": 2e6, "static_bytes": 1e6},
                       "b": {"peak_bytes": 4e6, "static_bytes": 2e6}}}  # fmt: skip
    ax = plot_mixing_memory(memory)
    assert [p.get_width() for p in ax.patches] == [2.0, 4.0, 1.0, 2.0]
    assert "MB" in ax.get_xlabel()


def test_heatmap_and_routing_plots_show_means_over_seeds():
    import matplotlib

    matplotlib.use("Agg")
    from modularforge.chapters.ch11_mixture_report import (
        mean_matrix,
        plot_expert_domain_heatmap,
        plot_routing_fractions,
    )

    study = synthetic_study(0.0)
    domains = study["settings"]["domains"]
    matrices = [{e: {d: 5.0 + s + (0.0 if e == d else 1.0) for d in domains} for e in domains}
                for s in (0.0, 0.1, 0.2)]  # fmt: skip
    study["arms"]["branched_oracle"]["matrix"] = matrices
    assert mean_matrix(study)["python"] == pytest.approx({"english": 6.1, "licenses": 6.1,
                                                          "python": 5.1})  # fmt: skip
    ax = plot_expert_domain_heatmap(study)
    texts = [t.get_text() for t in ax.texts]
    assert texts.count("5.100 *") == 3 and len(texts) == 4 * 3  # 3 experts + generalist row
    routing = {d: [[0.5, 0.5, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]] for d in domains}
    study["arms"]["mix_shared"]["routing"] = [routing] * 3
    axes = plot_routing_fractions(study)
    assert len(axes) == 2
    assert sorted(p.get_height() for p in axes[1].patches)[-3:] == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="no routing fractions"):
        plot_routing_fractions(study, arm="mix_router")


def test_command_line_refuses_a_budget_that_does_not_add_up(tmp_path):
    from modularforge.chapters.ch11_mixture_study import main

    with pytest.raises(ValueError, match="must equal budget_steps"):
        main(["--json", str(tmp_path / "s.json"), "--phase1-steps", "1"])
    assert not (tmp_path / "s.json").exists()  # nothing half-written


def test_dense_arms_are_reused_only_from_a_study_with_the_same_settings():
    from modularforge.chapters.ch11_mixture_study import reusable_dense

    source = synthetic_study(0.0)
    same = reusable_dense(MixtureStudySettings(), source)
    assert sorted(same) == [0, 1, 2] and sorted(same[1]) == ["dense", "dense_eqflops"]
    assert same[1]["dense"]["mixed"] == source["arms"]["dense"]["mixed"][1]
    assert same[2]["dense"]["domains"]["python"] == source["arms"]["dense"]["domains"]["python"][2]
    other_split = MixtureStudySettings(phase1_steps=820, expert_steps=40)
    assert sorted(reusable_dense(other_split, source)[0]) == ["dense"]  # eqflops depends on it
    with pytest.raises(ValueError, match=r"settings \['seeds'\] differ"):
        reusable_dense(MixtureStudySettings(seeds=(3, 4, 5)), source)


def test_ingredient_rows_measure_the_gap_to_each_studys_dense():
    from modularforge.chapters.ch11_mixture_report import ingredient_rows

    before, after = synthetic_study(0.0), synthetic_study(-0.5)
    (row,) = ingredient_rows([("mixing longer", (before, "mix_shared"), (after, "mix_shared"))])
    assert row["closed"] == pytest.approx(0.5)
    assert row["gap before"] == pytest.approx(0.5)  # mix_shared is 5 arms after dense, 0.1 each
    assert row["verdict"] == "lower"
    (same,) = ingredient_rows([("nothing", (before, "mix_shared"), (before, "mix_shared"))])
    assert same["closed"] == 0 and same["verdict"] == "inconclusive"


def test_share_curve_is_sorted_by_share_and_plotted_with_dense():
    import matplotlib

    matplotlib.use("Agg")
    from modularforge.chapters.ch11_mixture_report import plot_share_curve, share_curve

    low, high = synthetic_study(0.0), synthetic_study(-0.3)
    low["settings"] = {**low["settings"], "phase1_steps": 400}
    curve = share_curve({"high": high, "low": low})
    assert [share for share, _, _ in curve["mix_shared"]] == [40.0, 70.0]
    assert curve["mix_shared"][1][1] == pytest.approx(5.21)
    ax = plot_share_curve({"high": high, "low": low})
    assert "%" in ax.get_xlabel() and len(ax.get_legend().get_texts()) == 3

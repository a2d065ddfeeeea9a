"""Tests for modularforge.mixture_study: equal-token settings, identical windows for every arm,
verdicts recomputed with the book's rule, and the stored study's own bookkeeping."""

from __future__ import annotations

import json

import pytest

from modularforge.config import ModelConfig
from modularforge.data import load_mixed
from modularforge.mixture_study import (
    ARMS,
    MixtureStudySettings,
    _domain_windows,
    domain_losses,
    read_study,
    study_table,
    study_verdicts,
    write_study,
)
from modularforge.train import evaluate_validation
from modularforge.trainer_model import seeded_trainer_model

CONFIG = ModelConfig.tiny()

pytestmark = pytest.mark.usefixtures("one_thread_per_module")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"seeds": (0, 1)}, "needs >= 3 distinct seeds"),
        ({"seeds": (0, 0, 1)}, "needs >= 3 distinct seeds"),
        ({"budget_steps": 999}, "must equal budget_steps"),
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
        arms[arm] = {"label": ARMS[arm], "mixed": values, "tokens": 1000 * (k + 1), "params": 7,
                     "domains": {d: values for d in ("english", "licenses", "python")}}  # fmt: skip
    return {"format": "modularforge-mixture-study",
            "settings": {"domains": ["english", "licenses", "python"]}, "arms": arms}  # fmt: skip


@pytest.mark.parametrize(("shift", "expected"), [(-1.0, "lower"), (0.0, "higher")])
def test_verdicts_follow_the_range_rule(shift, expected):
    verdicts = study_verdicts(synthetic_study(shift))
    assert verdicts["mix_shared vs dense"] == expected
    assert verdicts["phase1 vs dense"] == "higher"
    # fresh_oracle is listed before branched_oracle, so it is lower in the synthetic study.
    assert verdicts["branched vs fresh on python"] == "higher"


def test_table_rows_carry_tokens_and_spread():
    rows = study_table(synthetic_study(0.0))
    assert [r["arm"] for r in rows] == list(ARMS)
    assert rows[0]["mixed (nats)"] == "5.010 ± 0.010"
    assert rows[0]["tokens"] == 1000


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
    from modularforge.mixture_study import plot_mixing_memory, plot_mixture_study

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


def test_command_line_refuses_a_budget_that_does_not_add_up(tmp_path):
    from modularforge.mixture_study import main

    with pytest.raises(ValueError, match="must equal budget_steps"):
        main(["--json", str(tmp_path / "s.json"), "--phase1-steps", "1"])
    assert not (tmp_path / "s.json").exists()  # nothing half-written

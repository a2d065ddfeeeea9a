"""Training really trains: falling loss, a frozen trunk that stays frozen, reproducible runs."""

import dataclasses
import math

import pytest
import torch

from modularforge import ModelConfig
from modularforge.training.data import load_domain
from modularforge.training.train import (
    TrainingDivergedError,
    TrainSettings,
    fit,
    lr_multiplier,
    resolve_device,
    train_expert,
    train_shared,
)

#: Validation loss must fall by at least this many nats (the tiny preset falls ~1.5 in 120 steps).
MIN_PHASE1_DROP = 1.0
#: A fresh expert on a trained trunk starts high; in 60 steps it must recover at least this much.
#: Measured: 0.095 nats with one thread, 0.20 with two (the thread count changes phase 1's trunk,
#: and with it where the expert starts). An expert that does not train recovers exactly nothing
#: (evaluation is deterministic), so half the smaller drop still separates the two.
MIN_PHASE2_DROP = 0.05

SETTINGS = TrainSettings(steps=120, batch_size=16, seq_len=64, eval_every=60, progress=False)


@pytest.fixture(scope="module")
def trained_shared():
    return train_shared(ModelConfig.tiny(), SETTINGS)


def test_phase1_validation_loss_drops_and_the_trunk_comes_back_frozen(trained_shared):
    shared, history = trained_shared
    assert history.eval_steps == [0, 60, 120]
    assert history.val_loss[0] - history.val_loss[-1] > MIN_PHASE1_DROP
    assert shared.is_frozen
    assert len(history.train_loss) == SETTINGS.steps
    assert history.val_perplexity[-1] == pytest.approx(
        torch.tensor(history.val_loss[-1]).exp().item()
    )


def test_phase2_trains_only_the_expert_and_leaves_the_trunk_bit_identical(trained_shared):
    shared, _ = trained_shared
    before = {name: tensor.clone() for name, tensor in shared.state_dict().items()}
    settings = TrainSettings(steps=60, eval_every=30, progress=False)
    model, history = train_expert(shared, "python", settings, expert_idx=2)
    assert model.expert_idx == 2
    assert history.val_loss[0] - min(history.val_loss) > MIN_PHASE2_DROP
    for name, tensor in shared.state_dict().items():
        assert torch.equal(tensor, before[name]), name
    # Only expert parameters ever received a gradient.
    assert all(p.grad is None for p in shared.parameters())
    assert all(p.grad is not None for p in model.experts.parameters())


def test_negative_control_an_expert_that_barely_learns_fails_the_drop(trained_shared):
    """At a learning rate of 1e-12 the expert does not move, and the drop check says so."""
    shared, _ = trained_shared
    settings = TrainSettings(steps=60, eval_every=30, progress=False, lr=1e-12)
    _, history = train_expert(shared, "python", settings, expert_idx=2)
    assert not history.val_loss[0] - min(history.val_loss) > MIN_PHASE2_DROP


def test_same_seed_gives_bit_identical_loss_curves():
    settings = TrainSettings(steps=8, eval_every=4, progress=False)
    _, first = train_shared(ModelConfig.tiny(), settings)
    _, second = train_shared(ModelConfig.tiny(), settings)
    assert first.train_loss == second.train_loss
    assert first.val_loss == second.val_loss
    _, other = train_shared(ModelConfig.tiny(), TrainSettings(steps=8, seed=1, progress=False))
    assert other.train_loss != first.train_loss


def test_schedule_warms_up_then_decays_to_the_floor():
    settings = TrainSettings(steps=100, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_multiplier(0, settings) == pytest.approx(0.1)
    assert lr_multiplier(9, settings) == pytest.approx(1.0)
    assert lr_multiplier(100, settings) == pytest.approx(0.1)
    values = [lr_multiplier(step, settings) for step in range(10, 101)]
    assert values == sorted(values, reverse=True)


def test_nan_loss_stops_with_the_step_named(trained_shared):
    shared, _ = trained_shared
    model, _ = train_expert(shared, "english", TrainSettings(steps=1, progress=False))
    with torch.no_grad():
        model.experts[0].fc2.bias.fill_(float("nan"))
    data = load_domain("english", shared.config.vocab_size)
    with pytest.raises(TrainingDivergedError, match="loss became nan at step 0"):
        fit(model, data, TrainSettings(steps=3, progress=False))


def test_bad_settings_and_devices_are_refused():
    with pytest.raises(ValueError, match="TrainSettings.steps must be an int >= 1, got 0"):
        TrainSettings(steps=0)
    with pytest.raises(ValueError, match="TrainSettings.lr must be > 0"):
        TrainSettings(lr=0.0)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
    assert resolve_device("cpu") == torch.device("cpu")


def test_report_evals_prints_one_line_per_validation_pass(trained_shared, capsys):
    """Notebooks show progress as lines (a tqdm bar is a widget a stored page cannot replay)."""
    shared, _ = trained_shared
    quiet = dataclasses.replace(SETTINGS, steps=4, eval_every=2, eval_batches=1)
    train_expert(shared, "python", quiet)
    assert capsys.readouterr().out == ""  # the negative control: off by default
    _, history = train_expert(shared, "python", dataclasses.replace(quiet, report_evals=True))
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(history.eval_steps) - 1 == 2  # not the "before" pass
    assert lines[-1].startswith("phase 2: expert 0 (python): step 4/4, train loss ")
    assert lines[-1].endswith(f"val loss {history.val_loss[-1]:.3f}")


def test_report_evals_must_be_a_bool():
    with pytest.raises(ValueError, match="report_evals must be True or False"):
        TrainSettings(report_evals="yes")


def test_an_update_that_blows_up_the_weights_stops_at_the_next_validation():
    """The training loss is finite before the one step; the validation after it is not."""
    blown = TrainSettings(steps=1, eval_every=1, eval_batches=1, lr=1e10, warmup_steps=0)
    with pytest.raises(TrainingDivergedError, match="validation loss became nan after step 1"):
        train_shared(ModelConfig.tiny(), dataclasses.replace(blown, progress=False))


def test_negative_control_the_same_step_at_a_sane_rate_passes():
    sane = TrainSettings(steps=1, eval_every=1, eval_batches=1, warmup_steps=0, progress=False)
    _, history = train_shared(ModelConfig.tiny(), sane)
    assert all(math.isfinite(v) for v in history.val_loss)

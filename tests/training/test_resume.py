"""A run killed mid-training and resumed from its training state is bit-identical."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from modularforge import ModelConfig
from modularforge.files.checkpoint import CheckpointError, read_metadata
from modularforge.training.train import (
    TrainingDivergedError,
    TrainSettings,
    train_expert,
    train_shared,
)

CONFIG = ModelConfig.tiny()
SETTINGS = TrainSettings(
    steps=12, batch_size=4, seq_len=32, eval_every=6, eval_batches=2, progress=False
)

#: Trains phase 1 with a checkpoint every 2 steps, slowed down so the test can kill it.
TRAINER = textwrap.dedent(
    """
    import sys, time
    import modularforge.training.train as train
    from modularforge import ModelConfig
    original = train.language_model_loss
    def slow_loss(*args):
        time.sleep(0.15)
        return original(*args)
    train.language_model_loss = slow_loss
    settings = train.TrainSettings(steps=12, batch_size=4, seq_len=32, eval_every=6,
                                   eval_batches=2, progress=False)
    train.train_shared(ModelConfig.tiny(), settings, checkpoint_path=sys.argv[1],
                       checkpoint_every=2)
    """
)


def saved_step(path) -> int:
    try:
        return read_metadata(path)["metadata"]["step"]
    except (FileNotFoundError, CheckpointError):
        return 0


def test_killed_run_resumes_bit_identically(tmp_path):
    reference, reference_history = train_shared(CONFIG, SETTINGS)

    state = tmp_path / "phase1.state.safetensors"
    process = subprocess.Popen([sys.executable, "-c", TRAINER, str(state)])
    deadline = time.monotonic() + 60
    while saved_step(state) < 6 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    killed_at = saved_step(state)
    assert 6 <= killed_at < SETTINGS.steps, "the run must be killed mid-way"

    resumed, history = train_shared(CONFIG, SETTINGS, checkpoint_path=state, checkpoint_every=2)
    for name, tensor in reference.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], tensor), name
    assert history.train_loss == reference_history.train_loss
    assert history.val_loss == reference_history.val_loss
    assert [p.name for p in tmp_path.iterdir()] == [state.name]  # no temp files left


def test_expert_state_holds_only_the_expert_and_refuses_other_settings(tmp_path):
    shared, _ = train_shared(CONFIG, TrainSettings(steps=2, progress=False))
    reference, _ = train_expert(shared, "licenses", SETTINGS)
    state = tmp_path / "expert.state.safetensors"
    train_expert(shared, "licenses", SETTINGS, checkpoint_path=state, checkpoint_every=6)
    metadata = read_metadata(state)["metadata"]
    assert metadata["kind"] == "training-state" and metadata["step"] == SETTINGS.steps
    assert metadata["parameters"] and all(n.startswith("experts.") for n in metadata["parameters"])
    # Resuming a finished run restores its final weights and trains no further.
    resumed, _ = train_expert(shared, "licenses", SETTINGS, checkpoint_path=state)
    for mine, theirs in zip(
        resumed.experts.parameters(), reference.experts.parameters(), strict=True
    ):
        assert torch.equal(mine, theirs)
    other = TrainSettings(**{**SETTINGS.__dict__, "lr": 0.02})
    with pytest.raises(
        ValueError, match=r"cannot resume with different settings: lr: checkpoint 0.01, now 0.02"
    ):
        train_expert(shared, "licenses", other, checkpoint_path=state)


def test_nan_stops_the_run_and_keeps_the_last_good_state(tmp_path, monkeypatch):
    import modularforge.training.train as train

    state = tmp_path / "run.state.safetensors"
    original = train.language_model_loss
    calls = {"n": 0}

    def poisoned(logits, targets):
        loss = original(logits, targets)
        if torch.is_grad_enabled():  # training steps only, not validation passes
            calls["n"] += 1
            if calls["n"] == 5:  # step 4
                return loss * float("nan")
        return loss

    monkeypatch.setattr(train, "language_model_loss", poisoned)
    with pytest.raises(TrainingDivergedError, match="loss became nan at step 4"):
        train_shared(CONFIG, SETTINGS, checkpoint_path=state, checkpoint_every=2)
    # The state of step 4 (saved before the bad step) is intact and loads.
    assert read_metadata(state)["metadata"]["step"] == 4
    assert read_metadata(state)["metadata"]["history"]["steps"] == [0, 1, 2, 3]
    assert [p.name for p in tmp_path.iterdir()] == [state.name]

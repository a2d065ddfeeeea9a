"""A training state that no longer loads is set aside with a message and retrained (item 6)."""

import json
import shutil
from functools import partial

import pytest
import torch

from modularforge.chapters.ch07_faults_loading import (
    nested_json,
    rewrite_checkpoint,
    write_raw_checkpoint,
)
from modularforge.files.checkpoint import CheckpointError, save_expert
from modularforge.files.state_recovery import set_aside, train_or_set_aside
from modularforge.model.config import ModelConfig
from modularforge.model.shared import SharedComponents
from modularforge.model.trainer_model import ModuleTrainerModel
from modularforge.pipeline.run import PipelineSettings, expert_path, run_pipeline, state_path
from modularforge.training.data import load_domain
from modularforge.training.train import TrainSettings, fit

CONFIG = ModelConfig.tiny()
SETTINGS = TrainSettings(steps=2, batch_size=2, seq_len=16, eval_batches=1, progress=False)

pytestmark = pytest.mark.usefixtures("one_thread_per_module")


def _model(seed=0):
    torch.manual_seed(seed)
    return ModuleTrainerModel(SharedComponents(CONFIG), CONFIG, warn_if_unfrozen=False)


@pytest.fixture(scope="module")
def data():
    return load_domain("english", CONFIG.vocab_size)


@pytest.fixture(scope="module")
def real_state(tmp_path_factory, data, one_thread_per_module):
    """A valid training state of SETTINGS (step 2 = done), and the weights it holds."""
    path = tmp_path_factory.mktemp("state") / "run.state.safetensors"
    model = _model()
    fit(model, data, SETTINGS, checkpoint_path=path, checkpoint_every=1)
    return path.read_bytes(), {k: v.clone() for k, v in model.state_dict().items()}


def _garbage(path, real):
    path.write_bytes(b"this is not a checkpoint at all")


def _empty(path, real):
    path.write_bytes(b"")


def _truncated(path, real):
    path.write_bytes(real[: len(real) // 2])


def _header_only(path, real):
    path.write_bytes(real[:8])


def _deep_json(path, real):
    write_raw_checkpoint(path, nested_json(100_000))


def _step(value):
    def tamper(path, real):
        path.write_bytes(real)
        rewrite_checkpoint(path, metadata={"step": value})

    return tamper


def _expert_file(path, real):
    save_expert(_model(), path)  # a checkpoint, but of the wrong kind


def _wrong_tensor(path, real):
    path.write_bytes(real)
    rewrite_checkpoint(path, tensors=lambda t: {k: v.reshape(-1)[:1].clone() for k, v in t.items()})


DAMAGE = {
    "garbage": _garbage, "empty": _empty, "truncated": _truncated, "header only": _header_only,
    "deep json": _deep_json, "step 10^9": _step(10**9), "step -5": _step(-5),
    "step 1.5": _step(1.5), "step text": _step("2"), "an expert file": _expert_file,
    "tensors cut": _wrong_tensor,
}  # fmt: skip


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_bad_state_is_set_aside_and_retrained(tmp_path, data, real_state, damage):
    real, weights = real_state
    state = tmp_path / "run.state.safetensors"
    DAMAGE[damage](state, real)
    bad = state.read_bytes()
    with pytest.raises(CheckpointError):  # the state is refused as it is
        fit(_model(), data, SETTINGS, checkpoint_path=state, checkpoint_every=1)
    notes = []
    model = _model()
    history = train_or_set_aside(
        state,
        partial(fit, model, data, SETTINGS, checkpoint_path=state, checkpoint_every=1),
        lambda event, message: notes.append((event, message)),
        "set aside state run",
        "test",
    )
    aside = [p for p in tmp_path.iterdir() if ".bad" in p.name]
    assert len(aside) == 1 and aside[0].read_bytes() == bad  # kept, never deleted
    assert not aside[0].name.endswith(".safetensors")  # no glob for checkpoints sees it
    assert notes[0][0] == "set aside state run" and aside[0].name in notes[0][1]
    assert history.steps == [0, 1]  # trained from the start, to the same weights
    assert all(torch.equal(model.state_dict()[k], weights[k]) for k in weights)


def test_an_error_that_is_not_the_state_propagates(tmp_path):
    def train():
        raise CheckpointError("something else")

    with pytest.raises(CheckpointError, match="something else"):
        train_or_set_aside(tmp_path / "none.safetensors", train, lambda *a: None, "e", "p")


PIPELINE = PipelineSettings(
    steps=2, expert_steps=2, router_steps=1, batch_size=2, seq_len=16, top_k=(1,),
    checkpoint_every=1, eval_max_batches=1, dense_baseline=False, progress=False,
)  # fmt: skip


def test_the_pipeline_sets_a_bad_state_aside_and_finishes(tmp_path):
    out = tmp_path / "run"
    settings = PIPELINE
    state_path(out, "shared").parent.mkdir(parents=True)
    state_path(out, "shared").write_bytes(b"\x00" * 100)
    logs = []
    result = run_pipeline(out, settings, log=logs.append)
    assert result.events[:2] == ["set aside state shared", "trained shared"]
    assert any("set aside as shared.state.safetensors.bad," in line for line in logs)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["events"][0] == "set aside state shared"


class _Stop(Exception):
    pass


@pytest.fixture(scope="module")
def reference(tmp_path_factory, one_thread_per_module):
    """A finished run, and the real final training state of its expert 1.

    The run is stopped right after expert 1 is saved and before its state is
    removed; that state (step = expert_steps) is what a tampering user would edit.
    """
    out = tmp_path_factory.mktemp("reference") / "run"

    def stop_after_expert_1(model):
        if model.expert_idx == 1:
            raise _Stop

    with pytest.raises(_Stop):
        run_pipeline(out, PIPELINE, log=lambda _: None, on_expert_trained=stop_after_expert_1)
    real = state_path(out, "expert-1").read_bytes()
    run_pipeline(out, PIPELINE, log=lambda _: None)
    return out, real, json.loads((out / "manifest.json").read_text())


PIPELINE_DAMAGE = ["garbage", "empty", "truncated", "deep json", "step 10^9", "step -5", "step 1.5"]


@pytest.mark.parametrize("damage", PIPELINE_DAMAGE)
def test_a_tampered_expert_state_never_finishes_with_wrong_weights(tmp_path, reference, damage):
    """Expert 1 is lost; its state is damaged: the rerun sets it aside and retrains the same expert."""
    finished, real, manifest = reference
    out = shutil.copytree(finished, tmp_path / "run")
    expert_path(out, 1, "licenses").unlink()
    DAMAGE[damage](state_path(out, "expert-1"), real)
    logs = []
    result = run_pipeline(out, PIPELINE, log=logs.append)
    assert result.events[:4] == [
        "skipped shared", "skipped expert 0", "retrain expert 1", "set aside state expert-1",
    ]  # fmt: skip
    assert any("does not load as a training state" in line for line in logs)
    recorded = json.loads((out / "manifest.json").read_text())["phases"]["experts"]
    assert recorded["licenses"]["sha256"] == manifest["phases"]["experts"]["licenses"]["sha256"]
    for key in ("train_loss", "val_loss"):  # the same curve, so the same weights all along
        assert (
            recorded["licenses"]["history"][key]
            == manifest["phases"]["experts"]["licenses"]["history"][key]
        )
    assert "skipped router top1" in result.events  # the same expert, so the router still fits


def test_an_undamaged_final_state_is_used_not_set_aside(tmp_path, reference):
    """Negative control: the real state resumes (nothing set aside) to the same expert."""
    finished, real, manifest = reference
    out = shutil.copytree(finished, tmp_path / "run")
    expert_path(out, 1, "licenses").unlink()
    state_path(out, "expert-1").write_bytes(real)
    result = run_pipeline(out, PIPELINE, log=lambda _: None)
    assert not any(e.startswith("set aside") for e in result.events)
    assert not any(".bad" in p.name for p in (out / "state").iterdir())
    recorded = json.loads((out / "manifest.json").read_text())["phases"]["experts"]
    assert recorded["licenses"]["sha256"] == manifest["phases"]["experts"]["licenses"]["sha256"]


@pytest.mark.parametrize("times", [1, 2, 4])
def test_each_state_set_aside_keeps_its_own_name(tmp_path, times):
    """Deterministic names (`.bad`, `.bad-2`, ...) that never replace an earlier one."""
    state = tmp_path / "run.state.safetensors"
    for n in range(times):
        state.write_bytes(b"bad %d" % n)
        set_aside(state)
    names = [
        "run.state.safetensors.bad",
        *(f"run.state.safetensors.bad-{n}" for n in range(2, times + 1)),
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)
    assert {(tmp_path / name).read_bytes() for name in names} == {
        b"bad %d" % n for n in range(times)
    }

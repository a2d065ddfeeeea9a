"""Tests for modularforge.mixture.branching: a branched expert starts as the phase-1 FFNs bit for bit,
shares no storage with them, and training it moves only the expert."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from modularforge.files.checkpoint import save_expert
from modularforge.mixture.branching import branch_expert, load_phase1_ffn, train_expert_from
from modularforge.model.config import ModelConfig
from modularforge.model.trainer_model import seeded_trainer_model
from modularforge.training.data import load_domain
from modularforge.training.train import TrainSettings

CONFIG = ModelConfig.tiny()
SETTINGS = TrainSettings(steps=3, batch_size=4, seq_len=32, eval_every=3, eval_batches=1,
                         device="cpu", progress=False)  # fmt: skip

pytestmark = pytest.mark.usefixtures("one_thread_per_module")


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in module.state_dict().items()}


def assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.fixture
def scaffold():
    """A phase-1 scaffold: trunk + its FFNs, with non-trivial FFN weights."""
    model = seeded_trainer_model(CONFIG, frozen=False, seed=3)
    with torch.no_grad():
        for p in model.experts.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def test_branch_equals_phase1_ffn_bit_for_bit_and_shares_no_storage(scaffold):
    branch = branch_expert(scaffold)
    assert_identical(snapshot(branch), snapshot(scaffold.experts))
    source = {p.untyped_storage().data_ptr() for p in scaffold.experts.parameters()}
    assert not source & {p.untyped_storage().data_ptr() for p in branch.parameters()}
    assert all(p.requires_grad and p.grad is None for p in branch.parameters())


def test_training_a_branch_moves_the_expert_only(scaffold):
    shared = scaffold.shared.freeze()
    trunk, ffn = snapshot(shared), snapshot(scaffold.experts)
    data = load_domain("python", CONFIG.vocab_size)
    model, history = train_expert_from(shared, data, SETTINGS, "branched", scaffold.experts)
    assert_identical(snapshot(shared), trunk)  # the trunk is bit-identical
    assert_identical(snapshot(scaffold.experts), ffn)  # and so is the phase-1 FFN it came from
    moved = [
        not torch.equal(a, b)
        for a, b in zip(snapshot(model.experts).values(), ffn.values(), strict=True)
    ]
    assert sum(moved) >= len(moved) // 2  # negative control: the expert itself did train
    assert len(history.train_loss) == SETTINGS.steps


def test_branched_start_scores_like_phase1_and_fresh_start_differs(scaffold):
    shared = scaffold.shared.freeze()
    data = load_domain("english", CONFIG.vocab_size)
    zero = TrainSettings(**{**SETTINGS.__dict__, "steps": 1, "lr": 1e-12, "warmup_steps": 0})
    branched, hb = train_expert_from(shared, data, zero, "branched", scaffold.experts)
    fresh, hf = train_expert_from(shared, data, zero, "fresh")
    # Loss before any step: the branch is the phase-1 model; a fresh expert is not.
    from modularforge.training.train import evaluate_validation

    phase1 = evaluate_validation(scaffold, data, SETTINGS.batch_size, SETTINGS.seq_len, 1)
    assert hb.val_loss[0] == pytest.approx(phase1, abs=1e-6)
    assert abs(hf.val_loss[0] - phase1) > 1e-3
    assert not torch.equal(fresh.experts[0].fc1.weight, branched.experts[0].fc1.weight)


def test_load_phase1_ffn_round_trips_the_saved_file(scaffold, tmp_path):
    scaffold.shared.freeze()
    path = save_expert(scaffold, tmp_path / "phase1-ffn.safetensors")
    loaded = load_phase1_ffn(path, scaffold.shared)
    assert_identical(snapshot(loaded), snapshot(scaffold.experts))


@pytest.mark.parametrize(
    ("init", "with_ffn", "message"),
    [
        ("copied", True, "init must be one of"),
        ("branched", False, "needs phase1_ffn"),
        ("fresh", True, "takes no phase1_ffn"),
    ],
)
def test_bad_init_arguments_are_refused(scaffold, init, with_ffn, message):
    data = load_domain("english", CONFIG.vocab_size)
    ffn = scaffold.experts if with_ffn else None
    with pytest.raises(ValueError, match=message):
        train_expert_from(scaffold.shared, data, SETTINGS, init, ffn)


def test_branch_expert_refuses_other_objects():
    with pytest.raises(TypeError, match="ModuleTrainerModel or an nn.ModuleList"):
        branch_expert(nn.Linear(2, 2))

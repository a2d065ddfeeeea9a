"""Tests for modularforge.mixture.mixing: the chosen weight groups move, the others stay bit-identical
(negative control), and the memory probe orders the options and restores the mixture."""

from __future__ import annotations

import pytest
import torch

from modularforge.mixture.mixing import (
    TRAINABLE,
    configure_mixing,
    measure_mixing_step,
    train_mixing,
    trainable_groups,
)
from modularforge.mixture.routing import build_mixture
from modularforge.model.config import ModelConfig
from modularforge.model.expert import build_expert
from modularforge.model.shared import SharedComponents
from modularforge.training.data import load_mixed
from modularforge.training.train import TrainSettings

CONFIG = ModelConfig.tiny()
SETTINGS = TrainSettings(steps=2, batch_size=4, seq_len=32, eval_every=2, eval_batches=1,
                         lr=1e-2, warmup_steps=0, device="cpu", progress=False)  # fmt: skip

pytestmark = pytest.mark.usefixtures("one_thread_per_module")

#: Which groups each option must move (experts handled separately).
MOVES = {
    "router": {"router"},
    "router+attention+norms": {"router", "attention", "output_norm"},
    "all": {"router", "attention", "output_norm", "embedding"},
}


@pytest.fixture(scope="module")
def mixed():
    return load_mixed(CONFIG.vocab_size)


def make_moe(routing: str = "soft"):
    torch.manual_seed(0)
    shared = SharedComponents(CONFIG).freeze()
    experts = [build_expert(CONFIG) for _ in range(3)]
    return build_mixture(shared, experts, routing, generalist=build_expert(CONFIG),
                         aux_loss_weight=0.01)  # fmt: skip


def group_snapshot(moe):
    return {name: [p.detach().clone() for p in params]
            for name, params in trainable_groups(moe).items()}  # fmt: skip


def moved(before, after) -> dict[str, bool]:
    return {name: any(not torch.equal(a, b) for a, b in zip(before[name], after[name], strict=True))
            for name in before}  # fmt: skip


@pytest.mark.parametrize("trainable", TRAINABLE)
@pytest.mark.parametrize("freeze_experts", [True, False])
def test_only_the_chosen_groups_move(mixed, trainable, freeze_experts):
    moe = make_moe()
    before = group_snapshot(moe)
    history = train_mixing(moe, mixed, SETTINGS, trainable, freeze_experts)
    changed = moved(before, group_snapshot(moe))
    expected = MOVES[trainable] | ({"experts"} if not freeze_experts else set())
    assert {name for name, did in changed.items() if did} == expected
    assert len(history.train_loss) == SETTINGS.steps


def test_router_only_keeps_the_trunk_frozen_and_shared_choices_unfreeze_it():
    moe = configure_mixing(make_moe(), "router")
    assert moe.shared.is_frozen
    moe = configure_mixing(moe, "router+attention+norms")
    assert not moe.shared.is_frozen
    assert not any(p.requires_grad for p in moe.shared.token_embedding.parameters())
    assert all(p.requires_grad for p in moe.shared.attention.parameters())


def test_configure_mixing_refuses_unknown_choice():
    with pytest.raises(ValueError, match="trainable must be one of"):
        configure_mixing(make_moe(), "experts")


def test_mixing_memory_grows_with_what_trains_and_the_probe_restores_the_mixture(mixed):
    moe = make_moe()
    weights = {k: v.clone() for k, v in moe.state_dict().items()}
    rows = [measure_mixing_step(moe, mixed, SETTINGS, t, t != "all") for t in TRAINABLE]
    params = [r["trainable_params"] for r in rows]
    assert params == sorted(params) and len(set(params)) == 3
    # Router only: 2 layers x Linear(128, 4) = 2 * (128 * 4 + 4) parameters.
    assert params[0] == CONFIG.n_layers * (CONFIG.d_model * 4 + 4)
    static = [r["static_bytes"] for r in rows]
    assert static == sorted(static) and len(set(static)) == 3
    assert all(r["peak_bytes"] >= r["static_bytes"] for r in rows)
    for name, tensor in moe.state_dict().items():
        assert torch.equal(tensor, weights[name]), name

"""Tests for modularforge.measure.mixture_accounting: the analytic FLOPs of every kind of training step
match PyTorch's counter on real steps to the FLOP, parameters match real modules, and the
per-arm bookkeeping adds up."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from modularforge.chapters.ch11_mixture_study import MixtureStudySettings, _settings_dict
from modularforge.measure.flops import count_flops, flop_saving
from modularforge.measure.mixture_accounting import (
    PHASE_TRAINABLE,
    arm_accounting,
    experts_per_token,
    inference_flops_per_token,
    parameter_counts,
    phase_step_flops,
    training_step_flops,
)
from modularforge.mixture.mixing import configure_mixing
from modularforge.mixture.routing import build_mixture
from modularforge.model.config import ModelConfig
from modularforge.model.expert import build_expert
from modularforge.model.shared import SharedComponents
from modularforge.model.trainer_model import seeded_trainer_model

CONFIG = ModelConfig.tiny()
B, T = 2, 16

pytestmark = pytest.mark.usefixtures("one_thread_per_module")


def counted_step(model: torch.nn.Module) -> int:
    """All matmul FLOPs of one forward + backward (+ balancing loss), by PyTorch's counter."""
    torch.manual_seed(0)
    inputs = torch.randint(0, CONFIG.vocab_size, (B, T))
    targets = torch.randint(0, CONFIG.vocab_size, (B, T))

    def step() -> None:
        model.train()
        logits = model(inputs)
        loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))
        if getattr(model, "auxiliary_loss", None) is not None:
            loss = loss + model.auxiliary_loss
        loss.backward()

    return sum(count_flops(step).values())


def mixture(routing: str, trainable: str):
    torch.manual_seed(0)
    experts = [build_expert(CONFIG) for _ in range(3)]
    moe = build_mixture(SharedComponents(CONFIG), experts, routing, generalist=build_expert(CONFIG),
                        aux_loss_weight=0.01)  # fmt: skip
    return configure_mixing(moe, trainable, freeze_experts=trainable != "all")


@pytest.mark.parametrize(("phase", "frozen"), [("dense", False), ("expert", True)])
def test_dense_and_expert_steps_match_the_counter(phase, frozen):
    model = seeded_trainer_model(CONFIG, frozen=frozen, seed=0)
    assert phase_step_flops(CONFIG, B, T, phase) == counted_step(model)


def test_dense_minus_expert_is_the_packages_frozen_trunk_saving():
    dense = phase_step_flops(CONFIG, B, T, "dense")
    expert = phase_step_flops(CONFIG, B, T, "expert")
    assert dense - expert == sum(flop_saving(CONFIG, B, T).values())


@pytest.mark.parametrize("trainable", ["router", "router+attention+norms", "all"])
@pytest.mark.parametrize("routing", ["soft", "top1", "top2"])
def test_mixing_steps_match_the_counter_with_every_expert_run(routing, trainable):
    # MixtureOfExperts runs all 4 experts on every token whatever the routing.
    expected = training_step_flops(CONFIG, B, T, PHASE_TRAINABLE[trainable], 4, 4)
    assert counted_step(mixture(routing, trainable)) == expected


def test_a_wrong_trainable_set_is_caught_by_the_counter():
    # Negative control: counting the router-only stage as if attention trained is off.
    wrong = training_step_flops(CONFIG, B, T, PHASE_TRAINABLE["router+attention+norms"], 4, 4)
    assert counted_step(mixture("soft", "router")) != wrong


@pytest.mark.parametrize(("routing", "expected"), [("soft", 4), ("top2", 2), ("top1", 1)])
def test_soft_routing_pays_for_every_expert(routing, expected):
    assert experts_per_token(routing, 4) == expected
    step = phase_step_flops(CONFIG, B, T, "router", routing, 4)
    assert step == training_step_flops(CONFIG, B, T, ("router",), expected, 4)


def test_top_k_costs_less_than_soft_and_more_than_an_expert_step():
    soft = phase_step_flops(CONFIG, B, T, "router", "soft", 4)
    top2 = phase_step_flops(CONFIG, B, T, "router", "top2", 4)
    assert phase_step_flops(CONFIG, B, T, "expert") < top2 < soft


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: training_step_flops(CONFIG, B, T, ("ffn",)), "unknown trainable groups"),
        (lambda: training_step_flops(CONFIG, B, T, ("router",)), "has no router"),
        (lambda: experts_per_token("top3", 4), "unknown routing"),
        (lambda: phase_step_flops(CONFIG, B, T, "phase2"), "unknown phase"),
    ],
)
def test_bad_input_is_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_parameter_counts_match_real_modules():
    def n(module):
        return sum(p.numel() for p in module.parameters())

    dense = seeded_trainer_model(CONFIG, frozen=False, seed=0)
    assert parameter_counts(CONFIG, 1)["total"] == n(dense)
    assert parameter_counts(CONFIG, 0)["total"] == n(dense.shared)
    moe = mixture("soft", "router")
    assert parameter_counts(CONFIG, 4, 4)["total"] == n(moe)
    assert parameter_counts(CONFIG, 4, 4)["routers"] == n(moe.routers)


def test_inference_flops_per_token_match_a_counted_forward():
    model = seeded_trainer_model(CONFIG, frozen=True, seed=0).eval()
    inputs = torch.randint(0, CONFIG.vocab_size, (1, T))
    with torch.no_grad():
        counted = sum(count_flops(lambda: model(inputs)).values())
    assert inference_flops_per_token(CONFIG, T) * T == counted


def test_arm_accounting_adds_up_per_phase():
    s = MixtureStudySettings()
    stored = _settings_dict(s)
    per_step = s.batch_size * s.seq_len
    dense = arm_accounting(stored, "dense")
    assert dense["tokens"] == s.budget_steps * per_step
    assert dense["flops"] == s.budget_steps * phase_step_flops(CONFIG, 16, 64, "dense")
    for arm in ("mix_router", "mix_shared"):
        account = arm_accounting(stored, arm)
        assert account["tokens"] == dense["tokens"]  # equal tokens by construction
        assert [p["steps"] for p in account["phases"]] == [700, 240, 60]
        assert account["flops"] == sum(p["flops"] for p in account["phases"])
        assert account["params"] == parameter_counts(CONFIG, 4, 4)["total"]
    oracle = arm_accounting(stored, "branched_oracle")
    assert oracle["flops"] < arm_accounting(stored, "mix_router")["flops"] < dense["flops"]
    # soft routing runs all four experts at inference; the oracle runs one
    assert (
        arm_accounting(stored, "mix_router")["inference_flops_per_token"]
        > (oracle["inference_flops_per_token"])
    )
    assert oracle["active_params"] == dense["params"]
    with pytest.raises(ValueError, match="needs its steps"):
        arm_accounting(stored, "dense_eqflops")
    with pytest.raises(ValueError, match="unknown arm"):
        arm_accounting(stored, "sparse_upcycling")


def test_a_mixing_stage_that_trains_everything_is_counted_as_such():
    stored = {**_settings_dict(MixtureStudySettings()), "shared_trainable": "all"}
    account = arm_accounting(stored, "mix_shared")
    mixing = account["phases"][-1]
    assert mixing["flops"] == 60 * training_step_flops(CONFIG, 16, 64, PHASE_TRAINABLE["all"], 4, 4)
    default = arm_accounting(_settings_dict(MixtureStudySettings()), "mix_shared")
    assert account["flops"] > default["flops"]

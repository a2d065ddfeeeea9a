"""The new-domain study: matched FLOPs, the replay mix, and label routing that leaves old experts bit-identical."""

from __future__ import annotations

import pytest
import torch

from modularforge.chapters.ch11b_new_domain import (
    ARMS,
    NewDomainSettings,
    matched_expert_steps,
    replay_data,
    run_new_domain_study,
)
from modularforge.measure.mixture_accounting import phase_step_flops
from modularforge.model.config import ModelConfig
from modularforge.training.data import DomainData

pytestmark = pytest.mark.usefixtures("one_thread_per_module")


def test_an_expert_gets_the_steps_that_cost_the_dense_arms_flops() -> None:
    settings = NewDomainSettings()
    config = ModelConfig.preset(settings.preset)
    dense = phase_step_flops(config, 16, 64, "dense")
    expert = phase_step_flops(config, 16, 64, "expert")
    steps = matched_expert_steps(settings)
    assert steps == 262  # 200 dense steps at 0.762 of the FLOPs each
    assert abs(steps * expert - settings.dense_steps * dense) <= expert / 2


def test_replay_makes_the_old_domains_the_asked_fraction_of_the_stream() -> None:
    new = DomainData("new", torch.arange(1000), torch.arange(10))
    old = {d: DomainData(d, torch.full((5000,), i), torch.arange(10)) for i, d in enumerate("abc")}
    mixed = replay_data(new, old, fraction=0.5, eot=-1)
    assert torch.equal(mixed.train[:1000], new.train) and torch.equal(mixed.val, new.val)
    rest = mixed.train[1000:]
    separators = int((rest == -1).sum())
    assert separators == 3
    assert len(rest) - separators == 999  # 1000 old tokens asked, 333 from each of 3 domains
    for i in range(3):
        assert int((rest == i).sum()) == 333


@pytest.fixture(scope="module")
def small_study():
    settings = NewDomainSettings(seeds=(0,), phase1_steps=12, expert_steps=3, dense_steps=6,
                                 lr_grid=(1e-2,), windows_per_domain=4)  # fmt: skip
    return run_new_domain_study(settings)


def test_label_routing_leaves_the_old_experts_bit_identical(small_study) -> None:
    seed = small_study["per_seed"][0]
    assert seed["old_outputs_bit_identical"] is True
    for arm in ("C_expert", "C_expert_2x", "C_from_python"):
        run = seed["runs"][arm]["0.01"]
        assert {d: run[d] for d in seed["old_system"]} == seed[
            "old_system"
        ]  # exactly: 0 forgetting


def test_negative_control_fine_tuning_the_whole_model_moves_the_old_domains(small_study) -> None:
    seed = small_study["per_seed"][0]
    for arm in ("A_finetune", "B_replay"):
        run = seed["runs"][arm]["0.01"]
        assert all(run[d] != seed["before"][d] for d in seed["old_system"]), arm


def test_the_btm_branch_is_the_fine_tuned_model_plus_the_untouched_old_one(small_study) -> None:
    seed = small_study["per_seed"][0]
    d, a = seed["runs"]["D_branch"]["0.01"], seed["runs"]["A_finetune"]["0.01"]
    assert d["perl"] == a["perl"]
    assert all(d[name] == seed["before"][name] for name in seed["old_system"])
    assert set(seed["runs"]) == set(ARMS)

"""Chapter 5's experiments: log capture, the shared-FFN variant, the layout comparison."""

import logging

import matplotlib

matplotlib.use("Agg")

import pytest
import torch

from modularforge import ModelConfig
from modularforge.chapters.ch05_qa_experiments import (
    LayoutComparison,
    SharedFFNTrainerModel,
    build_arm,
    capture_logs,
    compare_expert_layouts,
    plot_layout_comparison,
    trainable_count,
)
from modularforge.model.expert import expert_ffn_parameter_count
from modularforge.model.shared import SharedComponents
from modularforge.model.trainer_model import ModuleTrainerModel
from modularforge.training.data import DomainData, load_domain
from modularforge.training.train import TrainSettings

CONFIG = ModelConfig.tiny().replace(n_layers=3)


def frozen_shared(seed: int = 0) -> SharedComponents:
    torch.manual_seed(seed)
    return SharedComponents(CONFIG).freeze()


# --------------------------------------------------------------------------- capture_logs


def test_capture_logs_sees_exactly_one_warning_for_an_unfrozen_trunk():
    shared = SharedComponents(CONFIG)
    with capture_logs() as records:
        ModuleTrainerModel(shared, CONFIG)
    assert len(records) == 1
    record = records[0]
    assert record.levelno == logging.WARNING
    assert record.name == "modularforge.model.trainer_model"
    n_params = sum(p.numel() for p in shared.parameters())
    assert f"their {n_params} parameters" in record.getMessage()


def test_capture_logs_sees_nothing_for_a_frozen_trunk_and_restores_the_logger():
    target = logging.getLogger("modularforge")
    before = (target.level, target.propagate, list(target.handlers))
    with capture_logs() as records:
        ModuleTrainerModel(frozen_shared(), CONFIG)
        SharedFFNTrainerModel(frozen_shared(), CONFIG)
    assert records == []
    assert (target.level, target.propagate, list(target.handlers)) == before


def test_shared_ffn_variant_warns_like_the_design_when_unfrozen():
    with capture_logs() as records:
        SharedFFNTrainerModel(SharedComponents(CONFIG), CONFIG)
    assert [r.name for r in records] == ["modularforge.model.trainer_model"]
    assert records[0].levelno == logging.WARNING


# --------------------------------------------------------------------------- the variant


def test_shared_ffn_has_one_layers_worth_of_parameters():
    model = SharedFFNTrainerModel(frozen_shared(), CONFIG)
    assert trainable_count(model) == expert_ffn_parameter_count(CONFIG)
    assert sum(p.numel() for p in model.trainable_parameters()) == trainable_count(model)
    per_layer = ModuleTrainerModel(frozen_shared(), CONFIG)
    assert trainable_count(per_layer) == CONFIG.n_layers * trainable_count(model)
    wide = build_arm("shared_wide", frozen_shared())
    assert wide.ffn.fc1.out_features == CONFIG.n_layers * CONFIG.d_ff
    assert trainable_count(wide) == expert_ffn_parameter_count(
        CONFIG.replace(d_ff=CONFIG.n_layers * CONFIG.d_ff)
    )


def test_shared_ffn_runs_the_same_module_at_every_layer_and_only_it_gets_grads():
    model = SharedFFNTrainerModel(frozen_shared(), CONFIG)
    calls = []
    handle = model.ffn.register_forward_hook(lambda module, i, o: calls.append(module))
    ids = torch.randint(0, CONFIG.vocab_size, (2, 7), generator=torch.Generator().manual_seed(0))
    logits = model(ids)
    handle.remove()
    assert logits.shape == (2, 7, CONFIG.vocab_size)
    assert len(calls) == CONFIG.n_layers and all(c is model.ffn for c in calls)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.ffn.parameters())
    assert all(p.grad is None for p in model.shared.parameters())


def test_shared_ffn_checks_inputs_and_config():
    model = SharedFFNTrainerModel(frozen_shared(), CONFIG)
    with pytest.raises(ValueError, match="vocab_size"):
        model(torch.tensor([[0, CONFIG.vocab_size]]))
    with pytest.raises(ValueError, match="rank 2"):
        model(torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="pass shared.config"):
        SharedFFNTrainerModel(frozen_shared(), CONFIG.replace(d_ff=64))
    with pytest.raises(ValueError, match="unknown arm"):
        build_arm("per_head", frozen_shared())


# --------------------------------------------------------------------------- the experiment


@pytest.fixture(scope="module")
def small_data() -> DomainData:
    data = load_domain("python", CONFIG.vocab_size)
    return DomainData("python", data.train[:20_000], data.val[:4_000])


SHORT = TrainSettings(
    steps=3, batch_size=4, seq_len=16, eval_every=3, eval_batches=2, progress=False
)


def test_compare_expert_layouts_returns_every_arm_with_its_curve(small_data):
    result = compare_expert_layouts(frozen_shared(), small_data, SHORT)
    assert isinstance(result, LayoutComparison)
    assert (result.domain, result.steps, result.seed) == ("python", 3, 0)
    assert [r.arm for r in result.arms] == ["per_layer", "shared", "shared_wide"]
    for arm in result.arms:
        assert arm.eval_steps == (0, 3)
        assert len(arm.val_loss) == 2
        assert arm.final_perplexity == pytest.approx(torch.tensor(arm.final_val_loss).exp().item())
    assert result["per_layer"].trainable_parameters == 3 * result["shared"].trainable_parameters
    # Same seed, same init for FFN 0: at step 0 the per-layer and shared arms differ only
    # in layers 1-2's FFNs, which start near identity -- but they are different functions.
    assert result["per_layer"].val_loss[0] != result["shared"].val_loss[0]
    with pytest.raises(KeyError):
        result["nope"]
    table = result.table().splitlines()
    assert len(table) == 4 and "val loss" in table[0]


def test_compare_expert_layouts_is_deterministic_and_leaves_the_trunk_alone(small_data):
    shared = frozen_shared()
    before = {k: v.clone() for k, v in shared.state_dict().items()}
    first = compare_expert_layouts(shared, small_data, SHORT, arms=("shared",))
    second = compare_expert_layouts(shared, small_data, SHORT, arms=("shared",))
    assert first == second
    assert all(torch.equal(v, before[k]) for k, v in shared.state_dict().items())
    with pytest.raises(ValueError, match="unknown arm"):
        compare_expert_layouts(shared, small_data, SHORT, arms=("sideways",))


def test_plot_layout_comparison_draws_one_line_per_arm(small_data):
    result = compare_expert_layouts(
        frozen_shared(), small_data, SHORT, arms=("per_layer", "shared")
    )
    ax = plot_layout_comparison(result)
    lines = ax.get_lines()
    assert len(lines) == 2
    assert list(lines[1].get_ydata()) == list(result["shared"].val_loss)
    assert ax.get_xlabel() == "step"
    assert "nats" in ax.get_ylabel()


def test_zero_ffn_control_has_nothing_to_train_and_is_only_evaluated(small_data):
    shared = frozen_shared()
    control = build_arm("zero_ffn", shared)
    assert trainable_count(control) == 0
    ids = torch.randint(0, CONFIG.vocab_size, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # the control is the trunk alone: embed, attention blocks, head
        x = shared.embed(ids)
        for layer in range(CONFIG.n_layers):
            x = shared.apply_attention(x, layer)
        assert torch.equal(control(ids), shared.predict(x))
    result = compare_expert_layouts(shared, small_data, SHORT, arms=("zero_ffn", "per_layer"))
    assert result["zero_ffn"].eval_steps == (0,)
    assert result["zero_ffn"].trainable_parameters == 0
    assert result["per_layer"].eval_steps == (0, 3)

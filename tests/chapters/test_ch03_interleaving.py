"""Chapter 3's instruments: the traced call order, the attention-first counterexample,
gradient counts and the training-curve plot."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pytest
import torch
from torch import nn

from modularforge import ModelConfig
from modularforge.chapters.ch03_interleaving import (
    AttentionFirstModel,
    adamw_step_changes,
    attention_input_differences,
    attention_inputs,
    format_trace,
    forward_attention_first,
    gradient_counts,
    plot_training_curves,
    trace_forward,
)
from modularforge.model.shared import SharedComponents
from modularforge.model.trainer_model import ModuleTrainerModel
from modularforge.training.train import TrainingHistory

CONFIG = ModelConfig.tiny().replace(n_layers=3)


def make_model(seed: int = 0) -> ModuleTrainerModel:
    torch.manual_seed(seed)
    shared = SharedComponents(CONFIG).freeze()
    model = ModuleTrainerModel(shared, CONFIG)
    # Larger expert weights than the 0.02 init, so the FFNs visibly change the stream.
    for ffn in model.experts:
        nn.init.normal_(ffn.fc2.weight, std=0.5)
    return model.eval()


def make_ids(batch: int = 2, seq_len: int = 9, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, CONFIG.vocab_size, (batch, seq_len), generator=generator)


def test_trace_follows_embed_then_attention_and_ffn_alternating_then_head():
    records = trace_forward(make_model(), make_ids())
    names = [record.name for record in records]
    expected = ["shared.token_embedding"]
    for layer in range(CONFIG.n_layers):
        expected += [f"shared.attention[{layer}]", f"experts[{layer}]"]
    expected += ["shared.output_norm", "lm head (tied to embedding)"]
    assert names == expected
    assert [record.position for record in records] == list(range(1, len(expected) + 1))
    roles = {record.name: record.role for record in records}
    assert roles["experts[1]"] == "trainable"
    assert roles["shared.attention[1]"] == "frozen"
    assert roles["shared.token_embedding"] == "frozen"
    assert records[0].output_shape == (2, 9, CONFIG.d_model)
    assert records[-1].output_shape == (2, 9, CONFIG.vocab_size)


def test_trace_removes_its_hooks_and_formats_a_table():
    model = make_model()
    records = trace_forward(model, make_ids())
    assert all(not module._forward_hooks for module in model.modules())
    table = format_trace(records).splitlines()
    assert len(table) == len(records) + 1
    assert table[1].split() == ["1", "shared.token_embedding", "(2,", "9,", "128)", "frozen"]


def test_attention_first_computes_a_different_function():
    model, ids = make_model(), make_ids()
    with torch.no_grad():
        right = model(ids)
        wrong = forward_attention_first(model, ids)
        wrapped = AttentionFirstModel(model)(ids)
    assert right.shape == wrong.shape
    assert (right - wrong).abs().max() > 1e-2
    assert torch.equal(wrong, wrapped)


def test_identity_experts_make_both_orders_agree_exactly():
    model, ids = make_model(), make_ids()
    for ffn in model.experts:  # fc2 = 0: each expert returns x + 0 = x
        nn.init.zeros_(ffn.fc2.weight)
        nn.init.zeros_(ffn.fc2.bias)
    with torch.no_grad():
        assert torch.equal(model(ids), forward_attention_first(model, ids))
    assert attention_input_differences(model, ids) == [0.0] * CONFIG.n_layers


def test_only_layer_zero_attention_sees_the_same_input_in_both_orders():
    model, ids = make_model(), make_ids()
    right = attention_inputs(model, ids, "interleaved")
    assert len(right) == CONFIG.n_layers
    assert right[0].shape == (2, 9, CONFIG.d_model)
    differences = attention_input_differences(model, ids)
    assert differences[0] == 0.0
    assert all(difference > 1e-2 for difference in differences[1:])
    with pytest.raises(ValueError, match="order"):
        attention_inputs(model, ids, "backwards")


def test_gradients_reach_only_the_expert():
    model = make_model()
    counts = gradient_counts(model, make_ids(seq_len=10))
    assert counts.expert_with_grad == counts.expert_total == 6 * CONFIG.n_layers
    assert counts.shared_with_grad == 0
    assert counts.shared_total == 3 + 6 * CONFIG.n_layers
    assert all(p.grad is None for p in model.parameters())  # left clean
    with pytest.raises(ValueError, match="2 tokens"):
        gradient_counts(model, make_ids(seq_len=1))


def test_plot_draws_a_train_and_a_validation_line_per_history():
    histories = {}
    for name, shift in (("phase 1", 0.0), ("phase 2", 1.0)):
        history = TrainingHistory()
        history.steps = list(range(20))
        history.train_loss = [5.0 - 0.1 * step + shift for step in range(20)]
        history.eval_steps = [0, 10, 20]
        history.val_loss = [5.0 + shift, 4.0 + shift, 3.5 + shift]
        histories[name] = history
    ax = plot_training_curves(histories, smooth=5)
    lines = ax.get_lines()
    assert len(lines) == 4
    assert ax.get_xlabel() == "step" and ax.get_ylabel() == "loss (nats)"
    # Phase 2 is drawn after phase 1 on the same step axis.
    assert list(lines[3].get_xdata()) == [20, 30, 40]
    # Smoothing: the 5th point is the mean of the first five train losses.
    assert lines[0].get_ydata()[4] == pytest.approx(sum(5.0 - 0.1 * s for s in range(5)) / 5)
    with pytest.raises(ValueError, match="smooth"):
        plot_training_curves(histories, smooth=0)
    # The legend sits entirely below the plot area, so it cannot cover a curve.
    ax.figure.canvas.draw()
    renderer = ax.figure.canvas.get_renderer()
    legend_box = ax.get_legend().get_window_extent(renderer)
    assert legend_box.y1 <= ax.get_window_extent(renderer).y0
    # ... and inside the figure, so no label is cut off at an edge.
    figure_box = ax.figure.bbox
    assert figure_box.x0 <= legend_box.x0 and legend_box.x1 <= figure_box.x1
    assert figure_box.y0 <= legend_box.y0


def test_plot_legend_fits_the_figure_with_the_chapters_long_labels():
    long_label = "phase 1 (trunk + temporary FFNs; balanced mixed validation)"
    histories = {}
    for name in (long_label, "phase 2 (python expert)"):
        history = TrainingHistory()
        history.steps = list(range(30))
        history.train_loss = [5.0 - 0.05 * step for step in range(30)]
        history.eval_steps = [0, 15, 30]
        history.val_loss = [5.0, 4.5, 4.0]
        histories[name] = history
    _, ax = plt.subplots(figsize=(8, 4.5), layout="constrained")
    plot_training_curves(histories, ax=ax)
    ax.figure.canvas.draw()
    legend_box = ax.get_legend().get_window_extent(ax.figure.canvas.get_renderer())
    assert ax.figure.bbox.x0 <= legend_box.x0 and legend_box.x1 <= ax.figure.bbox.x1
    # Negative control: two columns, as before, run past both edges of the figure.
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    ax.figure.canvas.draw()
    wide = ax.get_legend().get_window_extent(ax.figure.canvas.get_renderer())
    assert wide.x0 < ax.figure.bbox.x0 or wide.x1 > ax.figure.bbox.x1


@pytest.mark.parametrize(
    ("zero_shared_grads", "moved"),
    [(False, "none"), (True, "every nonzero one")],  # grad None vs the zero-grad control
)
def test_adamw_with_weight_decay_skips_parameters_without_grad(zero_shared_grads, moved):
    model = make_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    changes = adamw_step_changes(
        model, make_ids(seq_len=10), weight_decay=0.5, zero_shared_grads=zero_shared_grads
    )
    assert changes.expert_changed == changes.expert_total == 6 * CONFIG.n_layers
    assert changes.shared_total == 3 + 6 * CONFIG.n_layers
    # grad None: AdamW skips the tensor, weight decay included. A zero grad (the
    # control) is not skipped: decay shrinks every shared tensor with a nonzero entry.
    nonzero = sum(bool(p.detach().abs().sum() > 0) for p in model.shared.parameters())
    assert changes.shared_changed == (0 if moved == "none" else nonzero)
    assert nonzero > 0
    assert (changes.shared_grads, changes.weight_decay) == (
        "zeros" if zero_shared_grads else "none",
        0.5,
    )
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # untouched
    assert all(p.grad is None for p in model.parameters())


def test_adamw_step_changes_checks_its_inputs():
    with pytest.raises(ValueError, match="2 tokens"):
        adamw_step_changes(make_model(), make_ids(seq_len=1))
    with pytest.raises(ValueError, match="weight_decay"):
        adamw_step_changes(make_model(), make_ids(), weight_decay=0.0)

"""Each lean option gives the plain step's loss and update, within fp32 rounding."""

import pytest
import torch

from modularforge import ModelConfig, ModuleTrainerModel, SharedComponents
from modularforge.lean.step import LEAN_EXPERT, LeanOptions, lean_training_step, make_lean_optimizer

CONFIG = ModelConfig.tiny()  # dropout 0: micro-batches draw no different random masks


def step(options: LeanOptions, frozen: bool = True, config: ModelConfig = CONFIG):
    torch.manual_seed(0)
    shared = SharedComponents(config)
    if frozen:
        shared.freeze()
    model = ModuleTrainerModel(shared, config, warn_if_unfrozen=False)
    initial = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = make_lean_optimizer(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randint(0, config.vocab_size, (4, 32), generator=generator)
    targets = torch.randint(0, config.vocab_size, (4, 32), generator=generator)
    torch.manual_seed(2)  # the dropout masks
    loss = lean_training_step(model, (inputs, targets), optimizer, options)
    weights = {name: p.detach().clone() for name, p in model.named_parameters()}
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return loss, weights, initial, grads


@pytest.mark.parametrize("frozen", [True, False], ids=["frozen", "unfrozen"])
@pytest.mark.parametrize(
    "options",
    [
        LeanOptions(micro_batch_size=1),
        LeanOptions(loss_chunk=8),
        LeanOptions(checkpoint_layers=True),
        LeanOptions(recompute_expert=True),
        LeanOptions(checkpoint_layers=True, recompute_expert=True),
        LeanOptions(micro_batch_size=2, loss_chunk=5, checkpoint_layers=True),
        LeanOptions(
            micro_batch_size=2, loss_chunk=5, checkpoint_layers=True, recompute_expert=True
        ),
        LeanOptions(loss_chunk=5, one_buffer_loss=True),
        LeanOptions(one_buffer_loss=True),
        LeanOptions(selective_attention=True),
        LeanOptions(2, 5, recompute_expert=True, one_buffer_loss=True, selective_attention=True),
        LeanOptions(2, 5, True, True, expert_rows=7),
    ],
    ids=[
        "micro-batches",
        "chunked-loss",
        "checkpointing",
        "expert-backward",
        "checkpointing+expert-backward",
        "all-but-expert",
        "all",
        "one-buffer-loss",
        "one-buffer-loss-unchunked",
        "selective-attention",
        "selective-all",
        "expert-backward-in-pieces",
    ],
)
def test_lean_step_matches_the_plain_step(options, frozen):
    plain_loss, plain_weights, initial, plain_grads = step(LeanOptions(), frozen)
    lean_loss, lean_weights, _, lean_grads = step(options, frozen)
    assert lean_loss == pytest.approx(plain_loss, rel=1e-5)
    assert lean_grads.keys() == plain_grads.keys()
    for name, grad in plain_grads.items():
        torch.testing.assert_close(lean_grads[name], grad, rtol=1e-4, atol=1e-7)
    # AdamW's first update is about lr * sign(grad): where a gradient is ~0, float
    # rounding can flip its sign, so weights agree to a fraction of lr (1e-2), not to 1e-6.
    for name, weight in plain_weights.items():
        torch.testing.assert_close(lean_weights[name], weight, rtol=0, atol=1e-4)
    # The step really moved the trained weights, so the comparison above means something.
    moved = [name for name in plain_weights if not torch.equal(plain_weights[name], initial[name])]
    assert any(name.startswith("experts.") for name in moved)
    assert any(name.startswith("shared.") for name in moved) == (not frozen)


def test_options_are_validated():
    with pytest.raises(ValueError, match="micro_batch_size must be None or an int >= 1, got 0"):
        LeanOptions(micro_batch_size=0)
    with pytest.raises(ValueError, match="targets must have the shape of inputs"):
        torch.manual_seed(0)
        shared = SharedComponents(CONFIG).freeze()
        model = ModuleTrainerModel(shared, CONFIG)
        lean_training_step(
            model,
            (torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 5, dtype=torch.long)),
            make_lean_optimizer(model.parameters()),
        )


@pytest.mark.parametrize("frozen", [True, False], ids=["frozen", "unfrozen"])
@pytest.mark.parametrize(
    "options",
    [
        LeanOptions(checkpoint_layers=True, recompute_expert=True),
        LeanOptions(recompute_expert=True, selective_attention=True, expert_rows=5),
    ],
    ids=["checkpointed", "selective-in-pieces"],
)
def test_recomputation_redraws_the_plain_steps_dropout_masks(frozen, options):
    """With dropout on, every recomputation redraws the very masks of forward.

    Unfrozen, the trunk's attention dropout runs on the math path, whose saved
    (B, heads, T, T) probabilities and mask are what selective recomputation drops.
    """
    config = CONFIG.replace(dropout=0.1, expert_dropout=0.2)
    plain_loss, _, _, plain_grads = step(LeanOptions(), frozen, config)
    lean_loss, _, _, lean_grads = step(options, frozen, config)
    assert lean_loss == pytest.approx(plain_loss, rel=1e-6)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(lean_grads[name], grad, rtol=1e-5, atol=1e-8)
    # Dropout really acted: the loss differs from the dropout-free model's.
    assert plain_loss != pytest.approx(step(LeanOptions(), frozen)[0], rel=1e-6)


def test_selective_attention_is_the_blocks_own_forward():
    from modularforge.lean.selective import selective_attention

    torch.manual_seed(0)
    shared = SharedComponents(CONFIG.replace(dropout=0.1))
    shared.set_attention_path("math")
    x = torch.randn(2, 16, CONFIG.d_model)
    for training in (False, True):
        shared.train(training)
        torch.manual_seed(3)
        expected = shared.attention[1](x)
        torch.manual_seed(3)
        assert torch.equal(selective_attention(shared.attention[1], x), expected)


def test_selective_attention_saves_no_attention_output():
    """The core's output is not kept for backward: the saved bytes drop by one (B, T, C)."""
    from modularforge.lean.selective import selective_attention
    from modularforge.measure.memory import SavedTensorCounter

    torch.manual_seed(0)
    shared = SharedComponents(CONFIG).freeze()
    shared.set_attention_path("fused")
    x = torch.randn(2, 16, CONFIG.d_model, requires_grad=True)
    counted = {}
    for name, run in (("plain", lambda: shared.attention[0](x)), ("selective", None)):
        counter = SavedTensorCounter(shared)
        with counter:
            run() if run else selective_attention(shared.attention[0], x)
        counted[name] = counter.bytes
    residual = x.numel() * 4
    assert counted["plain"] - counted["selective"] >= residual  # the attention output


def test_selective_and_checkpointed_layers_are_exclusive():
    with pytest.raises(ValueError, match="choose one"):
        LeanOptions(checkpoint_layers=True, selective_attention=True)
    with pytest.raises(ValueError, match="needs recompute_expert=True"):
        LeanOptions(expert_rows=4)
    with pytest.raises(ValueError, match="expert_rows must be None or an int >= 1"):
        LeanOptions(recompute_expert=True, expert_rows=0)


def test_lean_expert_setting():
    assert LEAN_EXPERT == LeanOptions(
        micro_batch_size=1, loss_chunk=32, checkpoint_layers=True, recompute_expert=True
    )
    optimizer = make_lean_optimizer([torch.nn.Parameter(torch.zeros(2))])
    assert optimizer.defaults["fused"] is True

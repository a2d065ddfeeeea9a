"""The shared trunk, the expert and the trainer model do what the design says."""

import logging

import pytest
import torch
import torch.nn.functional as F

from modularforge import ModelConfig, ModuleTrainerModel, SharedComponents
from modularforge.measure.memory import parameter_counts


def make_model(config: ModelConfig, frozen: bool = True, seed: int = 0) -> ModuleTrainerModel:
    torch.manual_seed(seed)
    shared = SharedComponents(config)
    if frozen:
        shared.freeze()
    return ModuleTrainerModel(shared, config, expert_idx=0, warn_if_unfrozen=False)


def test_seed_parameter_counts_match_the_hand_count():
    """Counted by hand from the architecture (shared/README.md): the numbers the book quotes."""
    config = ModelConfig.seed()
    model = make_model(config)
    counts = parameter_counts(config)
    assert counts.expert_per_layer == 2_100_736
    assert counts.expert == 8_402_944
    assert counts.token_embedding == 8_388_608
    assert counts.attention_per_layer == 1_051_648
    assert counts.shared == 12_596_224
    assert sum(p.numel() for p in model.trainable_parameters()) == counts.expert
    assert sum(p.numel() for p in model.shared.parameters()) == counts.shared
    assert sum(p.numel() for p in model.parameters()) == counts.total


def test_lm_head_is_tied_to_the_embedding():
    model = make_model(ModelConfig.tiny())
    assert model.shared.lm_head_weight is model.shared.token_embedding.weight
    x = torch.randn(1, 3, model.config.d_model)
    expected = F.linear(model.shared.output_norm(x), model.shared.token_embedding.weight)
    assert torch.equal(model.shared.predict(x), expected)


def test_forward_shape_and_causality():
    config = ModelConfig.tiny()
    model = make_model(config).eval()
    ids = torch.randint(0, config.vocab_size, (2, 12))
    logits = model(ids)
    assert logits.shape == (2, 12, config.vocab_size)
    changed = ids.clone()
    changed[:, 8:] = (changed[:, 8:] + 1) % config.vocab_size
    # Changing tokens 8.. must not change the logits of positions 0..7.
    torch.testing.assert_close(model(changed)[:, :8], logits[:, :8], rtol=0, atol=1e-6)
    assert not torch.allclose(model(changed)[:, 8:], logits[:, 8:])


def test_padding_mask_hides_padded_keys_and_never_yields_nan():
    config = ModelConfig.tiny()
    model = make_model(config).eval()
    ids = torch.randint(0, config.vocab_size, (1, 6))
    mask = torch.tensor([[0, 0, 1, 1, 1, 1]])
    logits = model(ids, attention_mask=mask)
    assert not logits.isnan().any()
    other = ids.clone()
    other[0, :2] = (other[0, :2] + 5) % config.vocab_size  # change only padded tokens
    torch.testing.assert_close(model(other, attention_mask=mask)[:, 2:], logits[:, 2:])


def test_freeze_sets_no_grad_and_eval_mode_and_stays_in_eval():
    config = ModelConfig.tiny().replace(dropout=0.5)
    shared = SharedComponents(config)
    assert not shared.is_frozen
    shared.freeze()
    assert shared.is_frozen
    assert not any(p.requires_grad for p in shared.parameters())
    model = ModuleTrainerModel(shared, config)
    model.train()  # puts the expert in train mode, but the frozen trunk must stay in eval
    assert model.experts.training
    assert not shared.training and not any(m.training for m in shared.modules())
    x = torch.randn(2, 5, config.d_model)
    # Dropout off in the frozen trunk: the same input gives the same embedding twice.
    ids = torch.randint(0, config.vocab_size, (2, 5))
    assert torch.equal(shared.embed(ids), shared.embed(ids))
    assert torch.equal(shared.apply_attention(x, 0), shared.apply_attention(x, 0))
    shared.unfreeze()
    assert shared.training and not shared.is_frozen


def test_unfrozen_shared_logs_a_warning(caplog):
    config = ModelConfig.tiny()
    with caplog.at_level(logging.WARNING, logger="modularforge"):
        ModuleTrainerModel(SharedComponents(config), config)
    assert len(caplog.records) == 1
    assert "not frozen" in caplog.records[0].getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="modularforge"):
        ModuleTrainerModel(SharedComponents(config).freeze(), config)
    assert caplog.records == []


def test_trainable_parameters_are_exactly_the_experts():
    model = make_model(ModelConfig.tiny())
    expert_ids = {id(p) for p in model.experts.parameters()}
    assert {id(p) for p in model.trainable_parameters()} == expert_ids
    assert {id(p) for p in model.parameters() if p.requires_grad} == expert_ids
    assert len(model.experts) == model.config.n_layers


def test_backward_gives_grads_to_expert_parameters_only():
    config = ModelConfig.tiny()
    model = make_model(config)
    ids = torch.randint(0, config.vocab_size, (2, 10))
    model(ids).logsumexp(-1).mean().backward()
    assert all(p.grad is not None for p in model.trainable_parameters())
    assert all(p.grad is None for p in model.shared.parameters())


def test_expert_block_is_layernorm_linear_gelu_dropout_linear_dropout_residual():
    config = ModelConfig.tiny()
    block = make_model(config).experts[0].eval()
    x = torch.randn(3, 4, config.d_model)
    expected = x + block.fc2(
        F.gelu(block.fc1(F.layer_norm(x, (config.d_model,), block.norm.weight, block.norm.bias)))
    )
    torch.testing.assert_close(block(x), expected)


def test_mismatched_config_and_bad_expert_idx_are_refused():
    tiny = ModelConfig.tiny()
    with pytest.raises(ValueError, match="shared components were built for"):
        ModuleTrainerModel(SharedComponents(tiny), tiny.replace(d_ff=64))
    with pytest.raises(ValueError, match="expert_idx must be an int >= 0, got -1"):
        ModuleTrainerModel(SharedComponents(tiny).freeze(), tiny, expert_idx=-1)


@pytest.mark.parametrize(
    ("ids", "message"),
    [
        ([[1, 2, 3]], r"must be a torch.Tensor of shape \(batch, seq_len\), got list"),
        (torch.tensor([[0.0, 1.0]]), r"integer dtype \(torch.long expected\), got torch.float32"),
        (torch.tensor([1, 2, 3]), r"rank 2 \(batch, seq_len\), got rank 1 with shape \(3,\)"),
        (torch.zeros(1, 129, dtype=torch.long), r"sequence length 129 exceeds max_seq_len 128"),
        (torch.tensor([[0, 2048]]), r"token ids must lie in \[0, 2048\).*from 0 to 2048"),
        (torch.tensor([[-1, 3]]), r"token ids must lie in \[0, 2048\).*from -1 to 3"),
        (torch.zeros(1, 0, dtype=torch.long), r"must be non-empty, got shape \(1, 0\)"),
    ],
)
def test_bad_input_ids_raise_value_error_saying_what_was_expected(ids, message):
    model = make_model(ModelConfig.tiny())
    with pytest.raises(ValueError, match=message):
        model(ids)


def test_bad_attention_mask_and_layer_index():
    model = make_model(ModelConfig.tiny())
    ids = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(ValueError, match=r"shape of input_ids \(1, 4\), got \(1, 3\)"):
        model(ids, attention_mask=torch.ones(1, 3))
    with pytest.raises(ValueError, match="0 \\(padding\\) or 1 \\(token\\)"):
        model(ids, attention_mask=torch.full((1, 4), 2))
    with pytest.raises(IndexError, match="layer_idx 2 is out of range .* 2 layers"):
        model.shared.apply_attention(torch.zeros(1, 4, model.config.d_model), 2)


def test_freeze_drops_leftover_gradients():
    config = ModelConfig.tiny()
    shared = SharedComponents(config)
    shared.predict(shared.embed(torch.zeros(1, 3, dtype=torch.long))).sum().backward()
    assert shared.token_embedding.weight.grad is not None
    shared.freeze()
    assert all(p.grad is None for p in shared.parameters())

"""The plain GPT baseline: same shape and parameter count as the trainer model, causal, validated."""

from __future__ import annotations

import pytest
import torch

from modularforge.measure.memory import parameter_counts
from modularforge.model.baseline import PlainGPT, build_baseline
from modularforge.model.config import ModelConfig
from modularforge.model.shared import SharedComponents
from modularforge.model.trainer_model import ModuleTrainerModel


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_seed_baseline_has_the_trainer_models_parameter_count() -> None:
    config = ModelConfig.seed()
    baseline = PlainGPT(config)
    trainer = ModuleTrainerModel(SharedComponents(config).freeze(), config)
    assert _count(baseline) == _count(trainer) == parameter_counts(config).total == 20_999_168


def test_tiny_baseline_matches_and_ties_its_head() -> None:
    config = ModelConfig.tiny()
    baseline = build_baseline(config)
    trainer = ModuleTrainerModel(SharedComponents(config).freeze(), config)
    assert _count(baseline) == _count(trainer)
    assert all(p.requires_grad for p in baseline.parameters())  # trained end to end
    tokens = torch.randint(0, config.vocab_size, (2, 8))
    logits = baseline(tokens)
    assert logits.shape == (2, 8, config.vocab_size)
    loss = logits.sum()
    loss.backward()
    assert baseline.token_embedding.weight.grad is not None


def test_baseline_is_causal() -> None:
    config = ModelConfig.tiny()
    baseline = build_baseline(config).eval()
    tokens = torch.randint(0, config.vocab_size, (1, 10))
    changed = tokens.clone()
    changed[0, 7] = (tokens[0, 7] + 1) % config.vocab_size
    with torch.no_grad():
        before, after = baseline(tokens), baseline(changed)
    torch.testing.assert_close(before[:, :7], after[:, :7])  # earlier positions can't see it
    assert not torch.allclose(before[:, 7:], after[:, 7:])


def test_build_baseline_is_seeded() -> None:
    config = ModelConfig.tiny()
    first, second = build_baseline(config, seed=3), build_baseline(config, seed=3)
    for a, b in zip(first.parameters(), second.parameters(), strict=True):
        assert torch.equal(a, b)


def test_baseline_validates_inputs_like_the_trainer_model() -> None:
    config = ModelConfig.tiny()
    baseline = build_baseline(config)
    with pytest.raises(ValueError, match="vocab_size"):
        baseline(torch.tensor([[config.vocab_size]]))
    with pytest.raises(ValueError, match="rank 2"):
        baseline(torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="max_seq_len"):
        baseline(torch.zeros(1, config.max_seq_len + 1, dtype=torch.long))

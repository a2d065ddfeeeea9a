"""Tests for modularforge.training.generate: the filters on known probabilities, greedy and sampled
decoding on real (tiny) models, context cropping and input validation."""

from __future__ import annotations

import math

import pytest
import torch

from modularforge.mixture.moe import MixtureOfExperts
from modularforge.model.config import ModelConfig
from modularforge.model.shared import SharedComponents
from modularforge.model.trainer_model import ModuleTrainerModel
from modularforge.training.data import load_tokenizer
from modularforge.training.generate import generate, generate_text, top_k_filter, top_p_filter

CONFIG = ModelConfig.tiny()
NEG_INF = float("-inf")


pytestmark = pytest.mark.usefixtures("one_thread_per_module")  # tiny matmuls, 2 shared cores


def logits_for(probs: list[float]) -> torch.Tensor:
    """Logits whose softmax is `probs` (log-probabilities)."""
    return torch.tensor([math.log(p) for p in probs], dtype=torch.float64)


def kept(filtered: torch.Tensor) -> list[int]:
    return [i for i, v in enumerate(filtered.tolist()) if v != NEG_INF]


@pytest.fixture(scope="module")
def model() -> ModuleTrainerModel:
    torch.manual_seed(0)
    shared = SharedComponents(CONFIG).freeze()
    trainer = ModuleTrainerModel(shared, CONFIG)
    with torch.no_grad():
        for ffn in trainer.experts:
            ffn.fc2.weight.mul_(20.0)  # a less flat next-token distribution
    return trainer


# --------------------------------------------------------------------------- top_p_filter


# Unsorted vocabulary: token 3 is the most probable, then 0, then 4, 1, 2.
PROBS = [0.25, 0.0625, 0.0625, 0.5, 0.125]


@pytest.mark.parametrize(
    ("p", "expected"),
    [
        (0.3, [3]),  # the top token alone already reaches 0.3
        (0.5, [3]),  # boundary: 0.5 reached exactly by the top token, nothing more
        (0.5001, [0, 3]),  # just above: the next one (0.25) is needed
        (0.75, [0, 3]),  # boundary: 0.5 + 0.25 hits 0.75 exactly
        (0.8, [0, 3, 4]),
        (0.875, [0, 3, 4]),  # boundary again: 0.5 + 0.25 + 0.125
        (0.9, [0, 1, 3, 4]),  # tie 0.0625/0.0625: the lower index (1) comes first
        (1.0, [0, 1, 2, 3, 4]),
    ],
)
def test_top_p_keeps_smallest_set_reaching_p_in_vocab_order(p: float, expected: list[int]) -> None:
    logits = logits_for(PROBS)
    filtered = top_p_filter(logits, p)
    assert kept(filtered) == expected
    assert filtered.shape == logits.shape
    for i in expected:  # kept values are untouched, in their original positions
        assert filtered[i] == logits[i]


def test_top_p_boundary_holds_for_float32_logits() -> None:
    logits = logits_for(PROBS).float()  # rounding in log and softmax must not move the cut
    assert kept(top_p_filter(logits, 0.75)) == [0, 3]
    assert kept(top_p_filter(logits, 0.875)) == [0, 3, 4]
    assert top_p_filter(logits, 0.75).dtype == torch.float32


def test_top_p_top_token_always_survives_even_when_above_p() -> None:
    logits = logits_for([0.05, 0.9, 0.05])
    assert kept(top_p_filter(logits, 0.01)) == [1]


def test_top_p_works_per_row_on_batches() -> None:
    batch = torch.stack([logits_for(PROBS), logits_for(list(reversed(PROBS)))])
    filtered = top_p_filter(batch, 0.75)
    assert kept(filtered[0]) == [0, 3]
    assert kept(filtered[1]) == [1, 4]


@pytest.mark.parametrize("p", [0.0, -0.1, 1.5, True])
def test_top_p_rejects_bad_p(p: float) -> None:
    with pytest.raises(ValueError, match=r"top_p must be a float in \(0, 1\]"):
        top_p_filter(logits_for(PROBS), p)


# --------------------------------------------------------------------------- top_k_filter


def test_top_k_keeps_k_largest_in_place() -> None:
    logits = logits_for(PROBS)
    assert kept(top_k_filter(logits, 1)) == [3]
    assert kept(top_k_filter(logits, 2)) == [0, 3]
    assert kept(top_k_filter(logits, 4)) == [0, 1, 3, 4]  # tie at 0.0625: lower index wins
    assert kept(top_k_filter(logits, 99)) == [0, 1, 2, 3, 4]
    assert torch.equal(top_k_filter(logits, 2)[[0, 3]], logits[[0, 3]])


@pytest.mark.parametrize("k", [0, -1, 1.5])
def test_top_k_rejects_bad_k(k: int) -> None:
    with pytest.raises(ValueError, match="top_k must be an int >= 1"):
        top_k_filter(logits_for(PROBS), k)


# --------------------------------------------------------------------------- generate


def test_greedy_equals_step_by_step_argmax(model: ModuleTrainerModel) -> None:
    prompt = torch.tensor([[5, 17, 300, 42], [9, 9, 1000, 7]])
    out = generate(model, prompt, 6, greedy=True)
    assert out.shape == (2, 10)
    assert torch.equal(out[:, :4], prompt)
    model.eval()
    ids = prompt.clone()
    with torch.no_grad():
        for _ in range(6):
            ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, ids)
    assert torch.equal(generate(model, prompt, 6, greedy=True), out)  # deterministic


def test_sampling_is_reproducible_with_a_seeded_generator(model: ModuleTrainerModel) -> None:
    prompt = torch.tensor([5, 17, 300])

    def sample(seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return generate(model, prompt, 6, temperature=1.5, top_k=50, top_p=0.95, generator=g)

    first = sample(1)
    assert first.shape == (9,) and first.dtype == torch.long  # 1-D in, 1-D out
    assert torch.equal(first, sample(1))
    assert not torch.equal(first, sample(2))


def test_top_k_one_sampling_equals_greedy(model: ModuleTrainerModel) -> None:
    prompt = torch.tensor([[5, 17, 300]])
    g = torch.Generator().manual_seed(0)
    sampled = generate(model, prompt, 4, top_k=1, generator=g)
    assert torch.equal(sampled, generate(model, prompt, 4, greedy=True))


def test_context_is_cropped_to_max_seq_len(model: ModuleTrainerModel) -> None:
    g = torch.Generator().manual_seed(3)
    prompt = torch.randint(0, CONFIG.vocab_size, (1, CONFIG.max_seq_len - 2), generator=g)
    out = generate(model, prompt, 5, greedy=True)  # passes max_seq_len after 2 tokens
    assert out.shape == (1, CONFIG.max_seq_len + 3)
    model.eval()
    with torch.no_grad():  # the last token was predicted from the last max_seq_len tokens
        window = out[:, -CONFIG.max_seq_len - 1 : -1]
        assert int(model(window)[0, -1].argmax()) == int(out[0, -1])


def test_generate_works_on_a_mixture_and_restores_train_mode(
    model: ModuleTrainerModel,
) -> None:
    torch.manual_seed(1)
    other = ModuleTrainerModel(model.shared, CONFIG, expert_idx=1)
    moe = MixtureOfExperts.from_trainer_models([model, other], top_k=2).train()
    out = generate(moe, torch.tensor([[1, 2, 3]]), 4, greedy=True)
    assert out.shape == (1, 7)
    assert moe.training
    assert torch.equal(generate(moe, torch.tensor([[1, 2, 3]]), 0), torch.tensor([[1, 2, 3]]))


def test_generate_text_round_trips_the_prompt(model: ModuleTrainerModel) -> None:
    tokenizer = load_tokenizer(CONFIG.vocab_size)
    text = generate_text(model, tokenizer, "def main():", 5, greedy=True)
    assert text.startswith("def main():")
    assert len(tokenizer.encode(text).ids) >= len(tokenizer.encode("def main():").ids)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_new_tokens": -1}, "max_new_tokens must be an int >= 0"),
        ({"temperature": 0.0}, "temperature must be a finite float > 0"),
        ({"temperature": -1.0}, "temperature must be a finite float > 0"),
        ({"top_p": 0.0}, r"top_p must be None or a float in \(0, 1\]"),
        ({"top_p": 1.2}, r"top_p must be None or a float in \(0, 1\]"),
        ({"top_k": 0}, "top_k must be None or an int >= 1"),
    ],
)
def test_generate_validates_inputs(model: ModuleTrainerModel, kwargs: dict, message: str) -> None:
    args = {"max_new_tokens": 3, **kwargs}
    with pytest.raises(ValueError, match=message):
        generate(model, torch.tensor([[1, 2]]), args.pop("max_new_tokens"), **args)

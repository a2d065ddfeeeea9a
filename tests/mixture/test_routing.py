"""Tests for modularforge.mixture.routing: soft routing, the generalist expert, and where the Switch
balancing loss is computed (whole batch vs per sequence)."""

from __future__ import annotations

import pytest
import torch

from modularforge.mixture.routing import SoftRouter, balancing_loss, build_mixture
from modularforge.model.config import ModelConfig
from modularforge.model.expert import build_expert
from modularforge.model.shared import SharedComponents

CONFIG = ModelConfig.tiny()

pytestmark = pytest.mark.usefixtures("one_thread_per_module")


@pytest.fixture
def parts():
    torch.manual_seed(0)
    shared = SharedComponents(CONFIG).freeze()
    experts = []
    for _ in range(3):
        expert = build_expert(CONFIG)
        with torch.no_grad():
            for p in expert.parameters():
                p.add_(torch.randn_like(p) * 0.2)
        experts.append(expert)
    return shared, experts


def test_soft_router_weights_are_sorted_probabilities_summing_to_one():
    torch.manual_seed(1)
    router = SoftRouter(CONFIG.d_model, 4)
    with torch.no_grad():
        router.linear.weight.normal_(std=1.0)
    x = torch.randn(2, 5, CONFIG.d_model)
    weights, indices, probs = router(x)
    assert weights.shape == indices.shape == probs.shape == (2, 5, 4)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 5))
    assert torch.equal(indices[..., 0], probs.argmax(-1))
    assert bool((weights[..., :-1] >= weights[..., 1:]).all())
    torch.testing.assert_close(probs.gather(-1, indices), weights)


def test_soft_mixture_is_the_probability_weighted_sum_of_every_expert(parts):
    shared, experts = parts
    moe = build_mixture(shared, experts, "soft").eval()
    with torch.no_grad():
        for router in moe.routers:
            router.linear.weight.normal_(std=0.5)
    ids = torch.randint(0, CONFIG.vocab_size, (2, 8))
    with torch.no_grad():
        x = shared.embed(ids)
        for layer in range(CONFIG.n_layers):
            x = shared.apply_attention(x, layer)
            normed = torch.nn.functional.layer_norm(x, x.shape[-1:])  # what a router reads
            probs = torch.softmax(moe.routers[layer].linear(normed), -1)  # (B, T, E)
            outs = torch.stack([e[layer].transform(x) for e in experts], -1)  # (B, T, C, E)
            x = x + (outs * probs[:, :, None, :]).sum(-1)
        expected = shared.predict(x)
        torch.testing.assert_close(moe(ids), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("routing", "top_k"), [("top1", 1), ("top2", 2), ("soft", 4)])
def test_build_mixture_routing_and_generalist(parts, routing, top_k):
    shared, experts = parts
    generalist = build_expert(CONFIG)
    moe = build_mixture(shared, experts, routing, generalist=generalist)
    assert moe.n_experts == 4 and moe.top_k == top_k
    assert moe.experts[-1] is generalist
    ids = torch.randint(0, CONFIG.vocab_size, (2, 8))
    assert moe(ids).shape == (2, 8, CONFIG.vocab_size)
    assert all(r.shape == (2, 8, top_k) for r in moe.last_routing)


def test_build_mixture_refuses_unknown_routing(parts):
    shared, experts = parts
    with pytest.raises(ValueError, match="routing must be one of"):
        build_mixture(shared, experts, "top3")


def test_batch_balancing_loss_is_what_the_mixture_computes(parts):
    shared, experts = parts
    moe = build_mixture(shared, experts, "top1", aux_loss_weight=1.0).train()
    probs = torch.softmax(torch.randn(3, 7, 3), -1)
    top1 = probs.argmax(-1)
    torch.testing.assert_close(moe._load_balancing(probs, top1, None), balancing_loss(probs, top1))


def test_global_and_per_sequence_balancing_differ_when_sequences_specialise():
    # Sequence 0 sends every token to expert 0, sequence 1 to expert 1: the batch is balanced,
    # each sequence is not.
    probs = torch.tensor([[[0.9, 0.1]] * 4, [[0.1, 0.9]] * 4])  # (B=2, T=4, E=2)
    top1 = probs.argmax(-1)
    batch = balancing_loss(probs, top1, over="batch")
    sequence = balancing_loss(probs, top1, over="sequence")
    assert batch.item() == pytest.approx(1.0)  # perfectly balanced over the batch
    assert sequence.item() == pytest.approx(1.8)  # 2 * (1 * 0.9): penalised per sequence
    # Negative control: when the sequences are alike, both forms agree.
    same = torch.tensor([[[0.6, 0.4], [0.4, 0.6]]] * 2)
    assert balancing_loss(same, same.argmax(-1), "batch").item() == pytest.approx(
        balancing_loss(same, same.argmax(-1), "sequence").item()
    )


@pytest.mark.parametrize(
    ("probs", "top1", "over", "message"),
    [
        (torch.ones(2, 3), torch.zeros(2, dtype=torch.long), "batch", "must be"),
        (torch.ones(2, 3, 2) / 2, torch.zeros(2, 3, dtype=torch.long), "token", "over must be"),
    ],
)
def test_balancing_loss_refuses_bad_input(probs, top1, over, message):
    with pytest.raises(ValueError, match=message):
        balancing_loss(probs, top1, over)


def test_soft_router_refuses_bad_expert_count():
    with pytest.raises(ValueError, match="n_experts must be"):
        SoftRouter(CONFIG.d_model, 0)

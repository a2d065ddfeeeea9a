"""Tests for modularforge.mixture.moe: routing math, exactness against the trainer model, gradients,
router training, router files and routing fractions. Tiny preset, real values."""

from __future__ import annotations

import json

import pytest
import torch

from modularforge.files.checkpoint import (
    CheckpointError,
    SharedMismatchError,
    save_expert,
    save_shared,
)
from modularforge.mixture.moe import (
    MixtureOfExperts,
    Router,
    load_mixture,
    load_router,
    routing_fractions,
    save_router,
    train_router,
)
from modularforge.model.config import ModelConfig
from modularforge.model.shared import SharedComponents
from modularforge.model.trainer_model import ModuleTrainerModel
from modularforge.training.data import load_mixed
from modularforge.training.train import TrainSettings, evaluate_validation

CONFIG = ModelConfig.tiny()


pytestmark = pytest.mark.usefixtures("one_thread_per_module")  # tiny matmuls, 2 shared cores


def make_models(n_experts: int = 3, seed: int = 0) -> list[ModuleTrainerModel]:
    """A frozen random trunk and n experts with visibly different (scaled-up) outputs."""
    torch.manual_seed(seed)
    shared = SharedComponents(CONFIG).freeze()
    models = []
    for e in range(n_experts):
        model = ModuleTrainerModel(shared, CONFIG, expert_idx=e)
        with torch.no_grad():
            for ffn in model.experts:
                ffn.fc2.weight.mul_(20.0)  # make each expert matter to the logits
        models.append(model)
    return models


def force_route(moe: MixtureOfExperts, expert: int) -> None:
    """Make every router pick `expert` with probability 1 for every token."""
    with torch.no_grad():
        for router in moe.routers:
            router.linear.weight.zero_()
            router.linear.bias.fill_(-100.0)
            router.linear.bias[expert] = 100.0


def ids(batch: int = 2, seq_len: int = 16, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, CONFIG.vocab_size, (batch, seq_len), generator=g)


# --------------------------------------------------------------------------- Router


@pytest.mark.parametrize("top_k", [1, 2])
def test_router_shapes_and_weights_sum_to_one(top_k: int) -> None:
    torch.manual_seed(0)
    router = Router(CONFIG.d_model, 3, top_k)
    x = torch.randn(2, 5, CONFIG.d_model) * 10
    weights, indices, probs = router(x)
    assert weights.shape == (2, 5, top_k) and indices.shape == (2, 5, top_k)
    assert probs.shape == (2, 5, 3) and indices.dtype == torch.long
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 5))
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 5))
    # The chosen experts are the most probable ones, in descending order.
    expected = probs.argsort(dim=-1, descending=True)[..., :top_k]
    assert torch.equal(indices, expected)
    if top_k == 1:
        assert torch.equal(weights, torch.ones(2, 5, 1))  # exactly 1, not just close
    else:
        chosen = probs.gather(-1, indices)
        torch.testing.assert_close(weights, chosen / chosen.sum(-1, keepdim=True))


def test_router_ties_go_to_lowest_index() -> None:
    router = Router(8, 4, 2)
    with torch.no_grad():
        router.linear.weight.zero_()
    _, indices, probs = router(torch.randn(3, 7, 8))
    torch.testing.assert_close(probs, torch.full((3, 7, 4), 0.25))
    assert torch.equal(indices, torch.tensor([0, 1]).expand(3, 7, 2))


@pytest.mark.parametrize(
    ("top_k", "n_experts", "message"),
    [(0, 3, "top_k must be one of"), (3, 4, "top_k must be one of"), (2, 1, "cannot exceed")],
)
def test_router_rejects_bad_top_k(top_k: int, n_experts: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Router(8, n_experts, top_k)


@pytest.mark.parametrize("top_k", [1, 2])
def test_router_receives_gradient(top_k: int) -> None:
    moe = MixtureOfExperts.from_trainer_models(make_models(3), top_k=top_k)
    moe.freeze_experts()
    batch = ids()
    loss = torch.nn.functional.cross_entropy(
        moe(batch[:, :-1]).reshape(-1, CONFIG.vocab_size), batch[:, 1:].reshape(-1)
    )
    loss.backward()
    for layer, router in enumerate(moe.routers):
        assert router.linear.weight.grad is not None, f"layer {layer}"
        # A plain renormalised top-1 weight (p / p) leaves only rounding noise (~1e-9) here.
        norm = float(router.linear.weight.grad.norm())
        assert norm > 1e-3, f"layer {layer}: router gradient norm {norm:.3g} is ~zero"
    assert all(p.grad is None for p in moe.experts.parameters())
    assert all(p.grad is None for p in moe.shared.parameters())


# --------------------------------------------------------------------------- MixtureOfExperts


@pytest.mark.parametrize("top_k", [1, 2])
@pytest.mark.parametrize("expert", [0, 2])
def test_forced_routing_equals_trainer_model(top_k: int, expert: int) -> None:
    models = make_models(3)
    moe = MixtureOfExperts.from_trainer_models(models, top_k=top_k).eval()
    force_route(moe, expert)
    batch = ids()
    with torch.no_grad():
        mixed = moe(batch)
        single = models[expert].eval()(batch)
        other = models[(expert + 1) % 3].eval()(batch)
    assert torch.equal(mixed, single)  # bit for bit: weight exactly 1, gathered output
    assert not torch.allclose(mixed, other, atol=1e-3)  # and the experts really differ
    assert all(torch.equal(r[..., 0], torch.full_like(r[..., 0], expert)) for r in moe.last_routing)


def test_top2_mixes_two_experts_with_their_weights() -> None:
    """One layer by hand: x + w0 * E_a(x) + w1 * E_b(x), with the router's own weights."""
    models = make_models(3)
    moe = MixtureOfExperts.from_trainer_models(models, top_k=2).eval()
    torch.manual_seed(3)
    batch = ids(1, 8)
    shared = moe.shared
    with torch.no_grad():
        x = shared.embed(batch)
        for layer in range(CONFIG.n_layers):
            x = shared.apply_attention(x, layer)
            weights, indices, _ = moe.routers[layer](x)
            update = torch.zeros_like(x)
            for t in range(batch.shape[1]):
                for slot in range(2):
                    expert = moe.experts[int(indices[0, t, slot])][layer]
                    update[0, t] += weights[0, t, slot] * expert.transform(x[:, t : t + 1])[0, 0]
            x = x + update
        expected = shared.predict(x)
        torch.testing.assert_close(moe(batch), expected, rtol=1e-5, atol=1e-5)


def test_auxiliary_loss_only_in_training_and_matches_formula() -> None:
    moe = MixtureOfExperts.from_trainer_models(make_models(3), top_k=1, aux_loss_weight=0.5)
    batch = ids()
    moe.eval()
    moe(batch)
    assert moe.auxiliary_loss is None
    moe.train()
    moe(batch)
    assert moe.auxiliary_loss is not None and moe.auxiliary_loss.requires_grad
    # Recompute by hand from the routers' outputs.
    terms = []
    with torch.no_grad():
        x = moe.shared.embed(batch)
        for layer in range(CONFIG.n_layers):
            x = moe.shared.apply_attention(x, layer)
            weights, indices, probs = moe.routers[layer](x)
            f = (
                torch.bincount(indices[..., 0].reshape(-1), minlength=3).float()
                / indices[..., 0].numel()
            )
            terms.append(3 * (f * probs.mean(dim=(0, 1))).sum())
            outs = torch.stack([e[layer].transform(x) for e in moe.experts])
            x = x + outs.gather(0, indices.permute(2, 0, 1)[..., None].expand_as(outs[:1]))[0]
    torch.testing.assert_close(moe.auxiliary_loss.detach(), 0.5 * torch.stack(terms).mean())
    # Without a weight there is no auxiliary loss at all.
    plain = MixtureOfExperts.from_trainer_models(make_models(3), top_k=1).train()
    plain(batch)
    assert plain.auxiliary_loss is None


def test_auxiliary_loss_is_one_when_balanced_and_n_when_collapsed() -> None:
    moe = MixtureOfExperts.from_trainer_models(make_models(3), aux_loss_weight=1.0)
    collapsed = torch.tensor([[1.0, 0.0, 0.0]]).expand(4, 6, 3)
    assert float(moe._load_balancing(collapsed, torch.zeros(4, 6, dtype=torch.long), None)) == 3.0
    uniform = torch.full((3, 1, 3), 1 / 3)
    top1 = torch.tensor([0, 1, 2]).view(3, 1)
    assert float(moe._load_balancing(uniform, top1, None)) == pytest.approx(1.0)


def test_mixture_validation_errors() -> None:
    models = make_models(2)
    with pytest.raises(ValueError, match="cannot exceed the number of experts"):
        MixtureOfExperts.from_trainer_models(models[:1], top_k=2)
    with pytest.raises(ValueError, match="top_k must be one of"):
        MixtureOfExperts.from_trainer_models(models, top_k=3)
    with pytest.raises(ValueError, match="aux_loss_weight"):
        MixtureOfExperts.from_trainer_models(models, aux_loss_weight=-1.0)
    with pytest.raises(ValueError, match="at least one"):
        MixtureOfExperts.from_trainer_models([])
    other = make_models(1, seed=5)[0]
    with pytest.raises(ValueError, match="different SharedComponents"):
        MixtureOfExperts.from_trainer_models([models[0], other])
    with pytest.raises(ValueError, match="one FFN per layer"):
        MixtureOfExperts(models[0].shared, [models[0].experts[:1]])


def test_frozen_experts_stay_in_eval_mode() -> None:
    config = CONFIG.replace(expert_dropout=0.5)
    shared = SharedComponents(config).freeze()
    models = [ModuleTrainerModel(shared, config, expert_idx=e) for e in range(2)]
    moe = MixtureOfExperts.from_trainer_models(models).freeze_experts()
    moe.train()
    assert moe.training and moe.routers.training
    assert not any(m.training for m in moe.experts.modules())
    assert not moe.shared.training


# --------------------------------------------------------------------------- training


def test_train_router_changes_only_routers() -> None:
    # Whether the routers learn something useful is tested in test_routers.py, on experts
    # that differ; these random experts are near-interchangeable.
    models = make_models(3)
    moe = MixtureOfExperts.from_trainer_models(models, top_k=1, aux_loss_weight=0.01)
    data = load_mixed(CONFIG.vocab_size)
    before = {name: p.detach().clone() for name, p in moe.named_parameters()}
    settings = TrainSettings(
        steps=30, batch_size=4, seq_len=32, lr=1e-2, warmup_steps=2, eval_every=30,
        eval_batches=2, progress=False, device="cpu",
    )  # fmt: skip
    history = train_router(moe, data, settings)
    changed = {n for n, p in moe.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {n for n, _ in moe.routers.named_parameters(prefix="routers")}
    assert len(history.val_loss) == 2
    assert not any(p.requires_grad for p in moe.shared.parameters())
    assert not any(p.requires_grad for p in moe.experts.parameters())
    assert evaluate_validation(moe, data, 4, 32, 2) == pytest.approx(history.val_loss[-1])


class _Crash(Exception):
    """Stands in for a killed process, right after a training state was written."""


def test_train_router_resumes_bit_identically(tmp_path, monkeypatch) -> None:
    import modularforge.training.train as train_module

    settings = TrainSettings(
        steps=6, batch_size=2, seq_len=32, warmup_steps=1, eval_every=6, eval_batches=1,
        progress=False, device="cpu",
    )  # fmt: skip
    data = load_mixed(CONFIG.vocab_size)
    reference = MixtureOfExperts.from_trainer_models(make_models(2), top_k=2)
    reference_history = train_router(reference, data, settings)

    original = train_module.save_training_state

    def save_then_crash(*args, **kwargs):
        original(*args, **kwargs)
        if kwargs["step"] == 3:
            raise _Crash

    state = tmp_path / "router.state.safetensors"
    monkeypatch.setattr(train_module, "save_training_state", save_then_crash)
    with pytest.raises(_Crash):
        train_router(
            MixtureOfExperts.from_trainer_models(make_models(2), top_k=2),
            data, settings, checkpoint_path=state, checkpoint_every=3,
        )  # fmt: skip
    resumed = MixtureOfExperts.from_trainer_models(make_models(2), top_k=2)
    history = train_router(resumed, data, settings, checkpoint_path=state, checkpoint_every=3)
    for a, b in zip(resumed.routers.parameters(), reference.routers.parameters(), strict=True):
        assert torch.equal(a, b)
    assert history.train_loss == reference_history.train_loss


def test_routing_fractions_rows_sum_to_one_and_follow_forced_route() -> None:
    moe = MixtureOfExperts.from_trainer_models(make_models(3))
    tokens = ids(1, 400)[0]
    fractions = routing_fractions(moe, tokens, batch_size=2, seq_len=32, max_batches=2)
    assert fractions.shape == (CONFIG.n_layers, 3)
    torch.testing.assert_close(fractions.sum(1), torch.ones(CONFIG.n_layers))
    force_route(moe, 1)
    fractions = routing_fractions(moe, tokens, batch_size=2, seq_len=32)
    assert torch.equal(fractions, torch.tensor([[0.0, 1.0, 0.0]] * CONFIG.n_layers))
    assert moe.training  # the mode is restored


# --------------------------------------------------------------------------- files


def test_save_and_load_router_round_trip(tmp_path) -> None:
    models = make_models(3)
    moe = MixtureOfExperts.from_trainer_models(models, top_k=2)
    path = save_router(moe, tmp_path / "router.safetensors")
    raw = path.read_bytes()
    header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
    meta = json.loads(header["__metadata__"]["modularforge"])
    assert (meta["kind"], meta["n_experts"], meta["top_k"], meta["n_layers"]) == ("router", 3, 2, 2)
    assert not list(tmp_path.glob(".*tmp*"))  # atomic write left no temp file
    fresh = MixtureOfExperts.from_trainer_models(models, top_k=2)
    assert not torch.equal(fresh.routers[0].linear.weight, moe.routers[0].linear.weight)
    load_router(fresh, path)
    for a, b in zip(fresh.routers.parameters(), moe.routers.parameters(), strict=True):
        assert torch.equal(a, b)
    batch = ids()
    assert torch.equal(fresh.eval()(batch), moe.eval()(batch))


def test_load_router_refuses_mismatches(tmp_path) -> None:
    models = make_models(3)
    path = save_router(MixtureOfExperts.from_trainer_models(models), tmp_path / "r.safetensors")
    with pytest.raises(CheckpointError, match=r"n_experts: file 3, mixture 2"):
        load_router(MixtureOfExperts.from_trainer_models(models[:2]), path)
    with pytest.raises(CheckpointError, match=r"top_k: file 1, mixture 2"):
        load_router(MixtureOfExperts.from_trainer_models(models, top_k=2), path)
    other = make_models(3, seed=7)
    with pytest.raises(SharedMismatchError, match="different shared weights"):
        load_router(MixtureOfExperts.from_trainer_models(other), path)
    expert_file = save_expert(models[0], tmp_path / "e.safetensors")
    with pytest.raises(CheckpointError, match="kind 'router'"):
        load_router(MixtureOfExperts.from_trainer_models(models), expert_file)
    pickle_file = tmp_path / "p.safetensors"
    torch.save({"x": torch.zeros(1)}, pickle_file)
    with pytest.raises(CheckpointError, match="not a valid modularforge checkpoint"):
        load_router(MixtureOfExperts.from_trainer_models(models), pickle_file)


def test_load_mixture_from_files(tmp_path) -> None:
    models = make_models(2)
    shared_path = save_shared(models[0].shared, tmp_path / "shared.safetensors")
    paths = [save_expert(m, tmp_path / f"e{m.expert_idx}.safetensors") for m in models]
    moe = load_mixture(shared_path, paths, top_k=2).eval()
    assert (moe.n_experts, moe.top_k) == (2, 2)
    assert moe.shared.is_frozen
    force_route(moe, 1)
    batch = ids()
    with torch.no_grad():
        assert torch.equal(moe(batch), models[1].eval()(batch))

"""A router that can learn: near-uniform at init on a trained trunk, and it moves off a bad expert.

Negative controls: on the same trunk the raw-stream router starts saturated (entropy
near 0), and a router trained at a negligible learning rate keeps its routing.
"""

from __future__ import annotations

import math

import pytest
import torch

from modularforge.files.checkpoint import load_expert, load_shared
from modularforge.mixture.moe import MixtureOfExperts, load_router, save_router, train_router
from modularforge.mixture.routers import ROUTER_INPUTS, router_entropy
from modularforge.mixture.routing import build_mixture
from modularforge.pipeline.load import load_pipeline_experts, load_pipeline_mixture
from modularforge.repo_paths import BOOK_DATA_DIR
from modularforge.training.data import eval_batches, load_mixed
from modularforge.training.train import TrainSettings

pytestmark = pytest.mark.usefixtures("one_thread_per_module")

RUN = BOOK_DATA_DIR / "pipeline-tiny"  # a trained trunk: its residual stream has a real norm
#: A router counts as able to learn when it starts within 10 % of uniform (the issue's bar).
NEAR_UNIFORM = 0.9


@pytest.fixture(scope="module")
def trained():
    models = list(load_pipeline_experts(RUN).values())
    shared = models[0].shared
    data = load_mixed(shared.config.vocab_size)
    inputs = [x for x, _ in eval_batches(data.val, 8, 64, max_batches=4)]
    return shared, models, inputs


@pytest.mark.parametrize("routing", ["top1", "soft"])
def test_a_fresh_router_on_a_trained_trunk_is_near_uniform(trained, routing) -> None:
    shared, models, inputs = trained
    torch.manual_seed(0)
    moe = build_mixture(shared, [m.experts for m in models], routing)
    entropy = router_entropy(moe, inputs)
    assert min(entropy) >= NEAR_UNIFORM * math.log(moe.n_experts), entropy


@pytest.mark.parametrize("routing", ["top1", "soft"])
def test_negative_control_the_raw_stream_saturates_a_fresh_router(trained, routing) -> None:
    shared, models, inputs = trained
    torch.manual_seed(0)
    moe = build_mixture(shared, [m.experts for m in models], routing, router_input="raw")
    entropy = router_entropy(moe, inputs)
    assert max(entropy) < NEAR_UNIFORM * math.log(moe.n_experts), entropy
    assert max(entropy) < 0.5, entropy  # measured 0.1-0.2 nats: nearly one-hot


def _share_of_harmful_expert(trained, lr: float) -> tuple[float, float]:
    """Top-1 share of a deliberately harmful expert before and after 40 router steps."""
    shared, models, inputs = trained
    torch.manual_seed(0)
    harmful = load_expert(RUN / "experts" / "expert-0-english.safetensors", shared).experts
    with torch.no_grad():
        for ffn in harmful:
            ffn.fc2.weight.mul_(-3.0)  # a wrong update, three times too large, on every token
    moe = build_mixture(shared, [models[2].experts, harmful], "top1")

    def share() -> float:
        moe.eval()
        with torch.no_grad():
            for x in inputs:
                moe(x)
                return float(
                    torch.stack([r[..., 0] == 1 for r in moe.last_routing]).double().mean()
                )
        raise AssertionError("no inputs")

    before = share()
    settings = TrainSettings(steps=40, batch_size=8, seq_len=64, lr=lr, warmup_steps=2,
                             eval_every=40, eval_batches=1, progress=False, device="cpu")  # fmt: skip
    train_router(moe, load_mixed(shared.config.vocab_size), settings)
    return before, share()


def test_a_normalised_router_learns_to_avoid_a_harmful_expert(trained) -> None:
    before, after = _share_of_harmful_expert(trained, lr=1e-2)
    assert after < before / 2, (before, after)  # measured 0.875 -> 0.209


def test_negative_control_a_router_that_cannot_move_fails_the_check(trained) -> None:
    before, after = _share_of_harmful_expert(trained, lr=1e-9)
    assert not after < before / 2, (before, after)


@pytest.mark.parametrize("router_input", ROUTER_INPUTS)
def test_a_router_file_records_its_input_and_the_loader_adopts_it(trained, tmp_path, router_input):
    shared, models, inputs = trained
    torch.manual_seed(0)
    moe = MixtureOfExperts.from_trainer_models(models, router_input=router_input)
    path = save_router(moe, tmp_path / "router.safetensors")
    other = "raw" if router_input == "layernorm" else "layernorm"
    loaded = load_router(MixtureOfExperts.from_trainer_models(models, router_input=other), path)
    assert loaded.router_input == router_input
    assert all(r.router_input == router_input for r in loaded.routers)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(inputs[0]), moe.eval()(inputs[0]))


def test_a_router_file_from_before_the_option_reads_the_raw_stream() -> None:
    assert load_pipeline_mixture(RUN, top_k=1).router_input == "raw"


def test_an_unknown_router_input_is_refused_by_name() -> None:
    shared = load_shared(RUN / "shared.safetensors")
    with pytest.raises(ValueError, match="router_input must be one of"):
        build_mixture(shared, [load_expert(RUN / "experts" / "expert-0-english.safetensors",
                                           shared).experts], "top1", router_input="rms")  # fmt: skip

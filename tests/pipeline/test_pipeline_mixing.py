"""The pipeline's BTX ingredients: experts branched from the phase-1 FFNs, and the mixing stage."""

from __future__ import annotations

import pytest
import torch

from modularforge.files.checkpoint import CheckpointError
from modularforge.pipeline.evaluation import mixing_row
from modularforge.pipeline.folders import mixing_paths
from modularforge.pipeline.run import (
    PipelineSettings,
    load_pipeline_mixed,
    load_pipeline_mixture,
    load_pipeline_phase1,
    read_manifest,
    run_pipeline,
)
from modularforge.training.data import load_domain
from modularforge.training.preflight import SettingsError
from modularforge.training.train import evaluate_validation

FAST = dict(
    steps=4, expert_steps=3, router_steps=2, mixing_steps=3, batch_size=2, seq_len=16,
    checkpoint_every=2, eval_max_batches=1, dense_baseline=False, progress=False,
)  # fmt: skip

pytestmark = pytest.mark.usefixtures("one_thread_per_module")


@pytest.fixture(scope="module")
def run(tmp_path_factory, one_thread_per_module):
    out = tmp_path_factory.mktemp("mixing")
    return out, run_pipeline(out, PipelineSettings(**FAST), log=lambda _: None)


def test_branched_experts_start_where_phase_1_ended(run, tmp_path) -> None:
    """A branched expert's loss before its first step is the phase-1 model's, to float rounding;
    a fresh expert's is not (the negative control: the same run with expert_init="fresh")."""
    out, result = run
    phases = result.manifest["phases"]
    settings = PipelineSettings(**FAST)
    phase1 = load_pipeline_phase1(out).eval()
    fresh = run_pipeline(
        tmp_path, PipelineSettings(**{**FAST, "expert_init": "fresh", "mixing_steps": 0}),
        log=lambda _: None,
    ).manifest["phases"]  # fmt: skip
    train = settings.train_settings(settings.expert_steps)
    for domain, entry in phases["experts"].items():
        assert entry["init"] == "branched" and fresh["experts"][domain]["init"] == "fresh"
        data = load_domain(domain, settings.config.vocab_size)
        phase1_loss = evaluate_validation(
            phase1, data, train.batch_size, train.seq_len, train.eval_batches
        )
        branched_start = entry["history"]["val_loss"][0]
        fresh_start = fresh["experts"][domain]["history"]["val_loss"][0]
        assert branched_start == pytest.approx(phase1_loss, abs=1e-5), domain
        assert abs(fresh_start - phase1_loss) > 1e-3, domain


def test_branched_experts_trained_away_from_the_phase_1_ffns(run) -> None:
    """Each expert moved from its starting copy, and the phase-1 file still has its recorded hash."""
    out, _ = run
    phase1 = load_pipeline_phase1(out)  # refuses a file whose hash changed
    mixture = load_pipeline_mixture(out, 1)
    start = phase1.experts[0].fc1.weight
    for e in range(len(mixture.experts)):
        trained = mixture.experts[e][0].fc1.weight
        assert trained.shape == start.shape and not torch.equal(trained, start), e


def test_the_mixing_stage_is_a_row_with_its_tokens_and_memory(run) -> None:
    out, result = run
    phases = result.manifest["phases"]
    entry = phases["mixing"]
    assert entry["top_k"] == 1 and entry["trainable"] == "router+attention+norms"
    assert entry["tokens"] == 3 * 32 and entry["memory"]["peak_bytes"] > 0
    # it trains more than the router (attention and norms) and fewer than every weight
    router_params = phases["routers"]["1"]["trainable_parameters"]
    assert router_params < entry["trainable_parameters"]
    rows = {row.name: row for row in result.comparison.rows}
    mixed = rows[mixing_row(1)]
    assert mixed.training_tokens == rows["MoE top-1"].training_tokens + entry["tokens"]
    assert result.comparison.system_tokens == mixed.training_tokens


def test_the_mixing_stage_changes_the_trunk_and_router_but_not_the_experts(run) -> None:
    out, _ = run
    before, after = load_pipeline_mixture(out, 1), load_pipeline_mixed(out)
    assert not torch.equal(
        before.shared.attention[0].qkv.weight, after.shared.attention[0].qkv.weight
    )
    assert torch.equal(before.shared.token_embedding.weight, after.shared.token_embedding.weight)
    assert not torch.equal(before.routers[0].linear.weight, after.routers[0].linear.weight)
    for a, b in zip(before.experts.parameters(), after.experts.parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_rerun_skips_the_stage_and_a_lost_file_retrains_it(run, tmp_path) -> None:
    out, _ = run
    again = run_pipeline(out, PipelineSettings(**FAST), log=lambda _: None)
    assert "skipped mixing" in again.events and "trained mixing" not in again.events
    mixing_paths(out, 1)[0].unlink()
    third = run_pipeline(out, PipelineSettings(**FAST), log=lambda _: None)
    assert "retrain mixing" in third.events and "trained mixing" in third.events
    load_pipeline_mixed(out)


def test_a_tampered_mixed_trunk_is_refused_by_its_hash(run) -> None:
    out, _ = run
    shared_file = mixing_paths(out, 1)[0]
    original = shared_file.read_bytes()
    try:
        shared_file.write_bytes(original[:-8] + bytes(8))
        with pytest.raises(CheckpointError, match="not the trunk after mixing"):
            load_pipeline_mixed(out)
    finally:
        shared_file.write_bytes(original)


def test_no_mixing_steps_no_stage(tmp_path) -> None:
    result = run_pipeline(
        tmp_path, PipelineSettings(**{**FAST, "mixing_steps": 0, "top_k": (2,)}),
        log=lambda _: None,
    )  # fmt: skip
    assert "mixing" not in read_manifest(tmp_path)["phases"]
    assert not any("mixing" in row.name for row in result.comparison.rows)


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("expert_init", "random", "expert_init must be one of branched, fresh"),
        ("expert_init", None, "expert_init must be one of"),
        ("mixing_trainable", "experts", "mixing_trainable must be one of router"),
        ("mixing_steps", -1, "mixing_steps must be an int >= 0"),
        ("mixing_steps", 2.5, "mixing_steps must be an int"),
        ("mixing_lr", float("nan"), "mixing_lr"),
        ("expert_lr", 0.0, "expert_lr"),
    ],
)
def test_bad_mixing_settings_are_refused_by_name(field, value, words) -> None:
    with pytest.raises(SettingsError, match=words):
        PipelineSettings(**{field: value})

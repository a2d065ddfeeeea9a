"""The three-phase pipeline end to end at tiny size: files, manifest, resume, CLI."""

import json

import pytest
import torch

from modularforge.cli.main import main
from modularforge.files.checkpoint import read_metadata
from modularforge.pipeline.run import (
    ORACLE_ROW,
    PHASE1_ROW,
    UNIFORM_ROW,
    PipelineSettings,
    expert_path,
    memory_flatness,
    memory_table,
    phase1_ffn_path,
    read_manifest,
    router_path,
    run_pipeline,
    sha256_file,
    shared_path,
)

SMALL = dict(
    steps=3, expert_steps=3, router_steps=2, batch_size=2, seq_len=16,
    checkpoint_every=2, eval_max_batches=1, progress=False,
)  # fmt: skip
DOMAINS = ["english", "licenses", "python"]


def _hashes(out):
    return {p.relative_to(out).as_posix(): sha256_file(p) for p in out.rglob("*.safetensors")}


pytestmark = pytest.mark.usefixtures("one_thread_per_module")  # tiny matmuls, 2 shared cores


@pytest.fixture(scope="module")
def finished(tmp_path_factory, one_thread_per_module):
    out = tmp_path_factory.mktemp("pipeline")
    logs = []
    result = run_pipeline(out, PipelineSettings(**SMALL), log=logs.append)
    return out, result, logs


def test_every_phase_writes_its_files(finished):
    out, result, _ = finished
    assert shared_path(out).is_file() and phase1_ffn_path(out).is_file()
    for i, domain in enumerate(DOMAINS):
        meta = read_metadata(expert_path(out, i, domain))["metadata"]
        assert meta["kind"] == "expert" and meta["expert_idx"] == i
        assert meta["shared_fingerprint"] == result.manifest["phases"]["shared"]["fingerprint"]
    for k in (1, 2):
        meta = read_metadata(router_path(out, k))["metadata"]
        assert meta["kind"] == "router" and meta["top_k"] == k and meta["n_experts"] == 3
    assert (out / "dense" / "shared.safetensors").is_file()
    assert not list((out / "state").glob("*.safetensors"))  # finished runs leave no state
    assert result.events == [
        "trained shared", "trained expert 0", "trained expert 1", "trained expert 2",
        "trained router top1", "trained router top2", "trained mixing", "trained dense",
        "evaluated",
    ]  # fmt: skip


def test_manifest_schema_and_token_accounting(finished):
    out, _, _ = finished
    manifest = read_manifest(out)
    assert manifest["format"] == "modularforge-pipeline" and manifest["version"] == 1
    assert manifest["domains"] == DOMAINS and manifest["tokens_per_step"] == 32
    phases = manifest["phases"]
    assert set(phases) == {"shared", "experts", "routers", "mixing", "dense", "evaluation"}
    assert phases["shared"]["sha256"] == sha256_file(shared_path(out))
    assert [phases["experts"][d]["index"] for d in DOMAINS] == [0, 1, 2]
    # dense = phase 1 + three experts + one router + the mixing stage, in tokens
    mixing_steps = PipelineSettings().mixing_steps
    assert phases["dense"]["tokens"] == (3 + 3 * 3 + 2 + mixing_steps) * 32
    for entry in phases["experts"].values():
        assert len(entry["history"]["train_loss"]) == 3
        assert entry["memory"]["peak_bytes"] > entry["memory"]["expert_param_bytes"] > 0
    assert phases["routers"]["2"]["trainable_parameters"] > 0
    matrix = phases["evaluation"]["matrix"]
    assert matrix["cols"] == [*DOMAINS, "mixed"]
    assert matrix["rows"] == [
        PHASE1_ROW, "expert 0 (english)", "expert 1 (licenses)", "expert 2 (python)",
        UNIFORM_ROW, "MoE top-1", "MoE top-2", "MoE top-1 + mixing stage", "dense", ORACLE_ROW,
    ]  # fmt: skip
    values = torch.tensor(matrix["values"])
    assert torch.isfinite(values).all() and (values > 1).all()


def test_comparison_rows_count_tokens_and_parameters(finished):
    out, result, _ = finished
    table = result.comparison
    trunk = 3 * 32
    assert table.row(PHASE1_ROW).training_tokens == trunk
    assert table.row("expert 1 (licenses)").training_tokens == trunk + 3 * 32
    assert table.row(UNIFORM_ROW).training_tokens == trunk + 3 * 3 * 32
    assert table.row("MoE top-1").training_tokens == trunk + 3 * 3 * 32 + 2 * 32
    single = table.row("expert 0 (english)").parameters
    assert table.row("dense").parameters == single == table.row(PHASE1_ROW).parameters
    expert = result.manifest["phases"]["experts"]["english"]["memory"]["expert_param_bytes"] // 4
    mixture = table.row(UNIFORM_ROW).parameters
    assert mixture == single + 2 * expert  # one trunk, three experts
    assert table.row(ORACLE_ROW).parameters == mixture
    config = result.manifest["config"]
    routers = config["n_layers"] * (config["d_model"] + 1) * 3
    assert table.row("MoE top-2").parameters == mixture + routers


def test_oracle_row_routes_each_domain_to_its_expert(finished):
    out, result, _ = finished
    matrix = result.matrix
    for i, domain in enumerate(DOMAINS):
        assert matrix[ORACLE_ROW, domain] == matrix[f"expert {i} ({domain})", domain]
    # its mixed score lies between its best and worst domain (each domain weighs the same)
    own = [matrix[ORACLE_ROW, d] for d in DOMAINS]
    assert min(own) * 0.5 < matrix[ORACLE_ROW, "mixed"] < max(own) * 2


def test_memory_stays_flat_across_expert_runs(finished):
    manifest = read_manifest(finished[0])
    rows = memory_table(manifest)
    assert [row["experts_trained_before"] for row in rows] == [0, 1, 2]
    check = memory_flatness(manifest)
    assert check.holds, check
    assert check.threshold == rows[0]["expert_param_bytes"] // 2 > 0
    assert max(check.growth) < check.threshold and max(check.left_behind) < check.threshold


def test_flatness_check_catches_experts_kept_alive(tmp_path):
    """Negative control: the same check fails when finished experts stay referenced."""
    kept = []
    settings = PipelineSettings(**{**SMALL, "checkpoint_every": 0, "dense_baseline": False})
    result = run_pipeline(tmp_path, settings, log=lambda _: None, on_expert_trained=kept.append)
    check = memory_flatness(result.manifest)
    assert not check.holds
    # each kept expert holds its weights and its last gradients: two experts' bytes per run
    assert check.growth == [0, 2 * check.expert_bytes, 4 * check.expert_bytes]
    assert all(left == 2 * check.expert_bytes for left in check.left_behind)
    assert len(kept) == 3


def test_rerun_skips_everything_and_changes_no_file(finished):
    out, _, _ = finished
    before = _hashes(out)
    logs = []
    result = run_pipeline(out, PipelineSettings(**SMALL), log=logs.append)
    assert all(event.startswith("skipped") for event in result.events), result.events
    assert len(result.events) == 9
    assert _hashes(out) == before
    assert any("verified, skipping" in line for line in logs)


def test_deleted_expert_is_retrained_alone(finished):
    out, _, _ = finished
    victim = expert_path(out, 1, "licenses")
    before_victim = sha256_file(victim)
    victim.unlink()
    keep = sha256_file(expert_path(out, 0, "english"))
    result = run_pipeline(out, PipelineSettings(**SMALL), log=lambda _: None)
    assert "trained expert 1" in result.events and "retrain expert 1" in result.events
    assert "skipped expert 0" in result.events and "skipped expert 2" in result.events
    assert "skipped shared" in result.events and "skipped dense" in result.events
    # seeded training reproduces the deleted file bit for bit, so the routers stay valid
    assert sha256_file(victim) == before_victim
    assert "skipped router top1" in result.events and "skipped evaluation" in result.events
    assert sha256_file(expert_path(out, 0, "english")) == keep


def test_corrupt_expert_is_reported_and_retrained(finished):
    out, _, _ = finished
    victim = expert_path(out, 2, "python")
    victim.write_bytes(b"not a checkpoint")
    logs = []
    result = run_pipeline(out, PipelineSettings(**SMALL), log=logs.append)
    assert "retrain expert 2" in result.events and "trained expert 2" in result.events
    assert any("does not verify" in line and "retraining" in line for line in logs)
    assert read_metadata(victim)["metadata"]["expert_idx"] == 2


def test_other_settings_in_the_same_directory_are_refused(finished):
    with pytest.raises(ValueError, match="expert_steps: 3 -> 4"):
        run_pipeline(finished[0], PipelineSettings(**{**SMALL, "expert_steps": 4}))


def test_settings_are_validated():
    with pytest.raises(ValueError, match="top_k"):
        PipelineSettings(top_k=(3,))
    with pytest.raises(ValueError, match="router_steps"):
        PipelineSettings(router_steps=0)


def test_cli_runs_and_resumes(finished, tmp_path, capsys):
    out = finished[0]
    args = ["pipeline", "--preset", "tiny", "--out", str(out), "--steps", "3",
            "--expert-steps", "3", "--router-steps", "2", "--batch-size", "2",
            "--seq-len", "16", "--checkpoint-every", "2", "--eval-max-batches", "1",
            "--no-progress"]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "MoE top-2" in printed and "dense" in printed and "skipping" in printed
    assert json.loads((out / "manifest.json").read_text())["events"][0] == "skipped shared"
    with pytest.raises(SystemExit):  # argparse refuses a top-k other than 1 or 2
        main(["pipeline", "--out", str(tmp_path / "x"), "--top-k", "3"])


#: Runs the pipeline slowly (a sleep per training step) so the test can kill it mid-expert.
KILLABLE = """
import sys, time
import torch
torch.set_num_threads(1)  # as this module's tests run: float sums depend on the thread count
import modularforge.training.train as train
from modularforge.pipeline.run import PipelineSettings, run_pipeline
original = train.language_model_loss
def slow(*args):
    time.sleep(0.1)
    return original(*args)
train.language_model_loss = slow
run_pipeline(sys.argv[1], PipelineSettings(**eval(sys.argv[2])), log=lambda line: None)
"""


def test_pipeline_killed_mid_expert_resumes_bit_identically(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    settings = dict(SMALL, expert_steps=12, top_k=(1,), dense_baseline=False)
    reference = tmp_path / "reference"
    run_pipeline(reference, PipelineSettings(**settings), log=lambda _: None)

    out = tmp_path / "killed"
    state = out / "state" / "expert-1.state.safetensors"
    process = subprocess.Popen([sys.executable, "-c", KILLABLE, str(out), repr(settings)])

    def saved_step() -> int:
        try:
            return read_metadata(state)["metadata"]["step"]
        except Exception:  # not written yet, or being replaced
            return 0

    deadline = time.monotonic() + 120
    while saved_step() < 4 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert 4 <= saved_step() < 12, "the run must be killed in the middle of expert 1"
    assert not expert_path(out, 1, "licenses").exists()

    result = run_pipeline(out, PipelineSettings(**settings), log=lambda _: None)
    assert "skipped shared" in result.events and "skipped expert 0" in result.events
    assert "trained expert 1" in result.events
    assert _hashes(out) == _hashes(reference)

"""`train-experts` under torchrun: every expert lands, on the right rank, bit-identical.

The reference is the same experts trained one after another in one process with
the same number of CPU threads (torchrun gives each worker OMP_NUM_THREADS=1;
float sums are grouped by thread, so the thread count must match to compare
bits). Then every tensor must be exactly equal, not merely close.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from intra_op_threads import torch_threads

from modularforge import ModelConfig
from modularforge.cli.main import main
from modularforge.files.checkpoint import load_expert, load_shared, save_expert, save_shared
from modularforge.model.shared import SharedComponents
from modularforge.pipeline.distributed import (
    assign_experts,
    backend_for,
    choose_device,
    expert_filename,
    parse_domains,
    read_manifest,
    sha256_file,
)
from modularforge.training.train import TrainSettings, train_expert

REPO_ROOT = Path(__file__).resolve().parents[2]
DOMAINS = ["english", "licenses", "python"]
TRAINING = ["--steps", "5", "--batch-size", "2", "--seq-len", "16", "--seed", "3"]


def free_port() -> int:
    """A TCP port nobody is listening on now (bound to port 0 on loopback, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def one_thread_env() -> dict[str, str]:
    """The environment for child processes: one thread, no inherited torchrun variables."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"}
    }
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


@pytest.fixture(scope="module")
def shared_path(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("trunk") / "shared.safetensors"
    return save_shared(SharedComponents(ModelConfig.tiny()).freeze(), path)


@pytest.fixture(scope="module")
def torchrun_out(shared_path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("torchrun") / "experts"
    command = [
        sys.executable, "-m", "torch.distributed.run",
        "--nproc_per_node=2", "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
        "-m", "modularforge", "train-experts",
        "--shared", str(shared_path), "--domains", ",".join(DOMAINS), "--out", str(out),
        "--device", "cpu", "--no-progress", *TRAINING,
    ]  # fmt: skip
    result = subprocess.run(
        command, cwd=REPO_ROOT, env=one_thread_env(), capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "wrote" in result.stdout and "world size 2" in result.stdout
    return out


@pytest.fixture(scope="module")
def reference_out(shared_path, tmp_path_factory) -> Path:
    """The same experts trained one after another in this process, with one thread."""
    out = tmp_path_factory.mktemp("reference")
    with torch_threads(1):  # what OMP_NUM_THREADS=1 gives each torchrun worker
        shared = load_shared(shared_path)
        settings = TrainSettings(
            steps=5, batch_size=2, seq_len=16, seed=3, device="cpu", progress=False
        )
        for idx, domain in enumerate(DOMAINS):
            model, _ = train_expert(shared, domain, settings, expert_idx=idx)
            save_expert(model, out / expert_filename(idx, domain))
    return out


def test_manifest_lists_every_expert_on_its_round_robin_rank(torchrun_out, shared_path):
    manifest = read_manifest(torchrun_out)
    assert manifest["world_size"] == 2 and manifest["backend"] == "gloo"
    assert manifest["domains"] == DOMAINS
    assert manifest["assignment"] == {"0": [0, 2], "1": [1]}
    assert [e["expert_idx"] for e in manifest["experts"]] == [0, 1, 2]
    assert [e["rank"] for e in manifest["experts"]] == [0, 1, 0]
    assert [e["domain"] for e in manifest["experts"]] == DOMAINS
    assert [r["rank"] for r in manifest["ranks"]] == [0, 1]
    assert all(r["threads"] == 1 for r in manifest["ranks"])
    assert manifest["settings"]["steps"] == 5 and manifest["settings"]["seed"] == 3
    for record in manifest["experts"]:
        path = torchrun_out / record["file"]
        assert record["file"] == expert_filename(record["expert_idx"], record["domain"])
        assert record["sha256"] == sha256_file(path)
        assert record["val_loss_end"] < record["val_loss_start"]  # 5 steps already help
        assert record["n_parameters"] > 0 and record["peak_bytes"] > 0
        # rank 0 trains two experts in one process: the second starts with no more tensors
        # alive than the first (the process-wide RSS high-water mark could not show this)
        assert record["live_before_bytes"] > 0
        assert (
            abs(record["live_after_bytes"] - record["live_before_bytes"])
            < 4 * record["n_parameters"] // 2
        )
    rank0 = [e for e in manifest["experts"] if e["rank"] == 0]
    growth = rank0[1]["live_before_bytes"] - rank0[0]["live_before_bytes"]
    assert growth < 4 * rank0[0]["n_parameters"] // 2
    # Only experts and the manifest: no leftover temporary files.
    assert sorted(p.name for p in torchrun_out.iterdir()) == sorted(
        [e["file"] for e in manifest["experts"]] + ["manifest.json"]
    )


def test_experts_load_and_equal_the_sequential_reference_bit_for_bit(
    torchrun_out, reference_out, shared_path
):
    shared = load_shared(shared_path)
    for idx, domain in enumerate(DOMAINS):
        name = expert_filename(idx, domain)
        ours = load_expert(torchrun_out / name, shared)  # checks config and trunk fingerprint
        reference = load_expert(reference_out / name, shared)
        assert ours.expert_idx == idx
        ours_state, ref_state = ours.experts.state_dict(), reference.experts.state_dict()
        assert ours_state.keys() == ref_state.keys()
        for key in ours_state:
            assert torch.equal(ours_state[key], ref_state[key]), f"expert {idx}: {key} differs"
    # A different expert is really different (the comparison above can fail).
    first = load_expert(torchrun_out / expert_filename(0, DOMAINS[0]), shared)
    second = load_expert(torchrun_out / expert_filename(1, DOMAINS[1]), shared)
    assert not torch.equal(first.experts[0].fc1.weight, second.experts[0].fc1.weight)


def test_without_torchrun_one_process_trains_all(
    shared_path, tmp_path, monkeypatch, capsys, one_thread
):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    out = tmp_path / "single"
    args = ["--steps", "2", "--batch-size", "2", "--seq-len", "16", "--no-progress"]
    code = main(
        ["train-experts", "--shared", str(shared_path), "--domains", "python,english",
         "--out", str(out), "--device", "cpu", *args]
    )  # fmt: skip
    assert code == 0
    manifest = read_manifest(out)
    assert manifest["world_size"] == 1 and manifest["backend"] is None
    assert [(e["expert_idx"], e["rank"], e["domain"]) for e in manifest["experts"]] == [
        (0, 0, "python"),
        (1, 0, "english"),
    ]
    assert "world size 1" in capsys.readouterr().out


def test_a_failing_rank_reports_its_error_and_writes_no_manifest(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    broken = tmp_path / "shared.safetensors"
    broken.write_bytes(b"not a checkpoint")
    code = main(
        ["train-experts", "--shared", str(broken), "--domains", "python",
         "--out", str(tmp_path / "out"), "--device", "cpu", "--steps", "1", "--no-progress"]
    )  # fmt: skip
    assert code == 1
    assert "rank 0 failed" in capsys.readouterr().err
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_round_robin_assignment():
    assert assign_experts(5, 2) == {0: [0, 2, 4], 1: [1, 3]}
    assert assign_experts(2, 4) == {0: [0], 1: [1], 2: [], 3: []}
    assert assign_experts(3, 1) == {0: [0, 1, 2]}
    with pytest.raises(ValueError):
        assign_experts(3, 0)


def test_domains_are_checked_before_any_work(shared_path, tmp_path, capsys):
    assert parse_domains(" english, python ") == ["english", "python"]
    with pytest.raises(ValueError, match="unknown domain"):
        parse_domains("english,klingon")
    with pytest.raises(ValueError, match="at least one"):
        parse_domains(",")
    code = main(
        ["train-experts", "--shared", str(shared_path), "--domains", "klingon",
         "--out", str(tmp_path / "out")]
    )  # fmt: skip
    assert code == 2 and "unknown domain" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_one_gpu_per_process_and_the_backend_that_fits_the_device():
    assert choose_device("cuda", local_rank=3) == "cuda:3"  # not every rank on GPU 0
    assert choose_device("cuda:1", local_rank=3) == "cuda:1"
    assert choose_device("cpu", local_rank=3) == "cpu"
    expected = "cuda:2" if torch.cuda.is_available() else "cpu"
    assert choose_device(None, local_rank=2) == expected
    assert backend_for("cpu") == "gloo"
    assert backend_for("cuda:0") == "nccl"

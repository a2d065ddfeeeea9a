"""The command line prints the book's numbers and round-trips real checkpoints."""

import json
import subprocess
import sys

from modularforge.cli.main import main


def test_budget_prints_computed_figures_beside_the_documents(capsys):
    assert main(["budget", "--preset", "seed"]) == 0
    out = capsys.readouterr().out
    assert "8,402,944" in out and "12,596,224" in out
    assert "~205 MB" in out and "516 MB" in out and "2.5x" in out
    assert "184.8 MB" in out and "336.0 MB" in out
    assert "activations, frozen, batch 16x512" in out


def test_train_shared_then_expert_then_info(tmp_path, capsys):
    shared = tmp_path / "shared.safetensors"
    expert = tmp_path / "expert.safetensors"
    common = ["--steps", "3", "--batch-size", "2", "--seq-len", "16", "--no-progress"]
    assert main(["train-shared", "--preset", "tiny", "--out", str(shared), *common]) == 0
    assert (
        main(
            [
                "train-expert",
                "--shared",
                str(shared),
                "--domain",
                "licenses",
                "--expert-idx",
                "1",
                "--out",
                str(expert),
                *common,
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["info", str(expert)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["metadata"]["kind"] == "expert"
    assert info["metadata"]["expert_idx"] == 1


def test_user_errors_exit_2_with_a_message(tmp_path, capsys):
    assert main(["info", str(tmp_path / "missing.safetensors")]) == 2
    assert "missing.safetensors" in capsys.readouterr().err


def test_python_dash_m_help_lists_every_command():
    out = subprocess.run(
        [sys.executable, "-m", "modularforge", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for command in ("budget", "train-shared", "train-expert", "info"):
        assert command in out

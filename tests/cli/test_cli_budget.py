"""`budget` works with each preset's own defaults and refuses a sequence it can't hold (item 16)."""

import pytest

from modularforge.cli.main import main
from modularforge.model.config import ModelConfig


@pytest.mark.parametrize("preset", ["seed", "tiny"])
def test_each_preset_runs_with_its_defaults(capsys, preset):
    assert main(["budget", "--preset", preset]) == 0
    max_len = ModelConfig.preset(preset).max_seq_len
    assert f"batch 16x{max_len}" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("preset", "options"),
    [("tiny", ["--seq-len", "129"]), ("tiny", ["--seq-len", "512"]), ("seed", ["--seq-len", "513"]),
     ("tiny", ["--seq-len", "0"]), ("tiny", ["--batch-size", "0"]), ("seed", ["--batch-size", "-4"])],
)  # fmt: skip
def test_a_size_the_preset_cannot_hold_is_one_line(capsys, preset, options):
    assert main(["budget", "--preset", preset, *options]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: budget.") and err.count("\n") == 1


def test_an_explicit_shorter_sequence_is_used(capsys):
    assert main(["budget", "--preset", "tiny", "--seq-len", "32", "--batch-size", "4"]) == 0
    assert "batch 4x32" in capsys.readouterr().out

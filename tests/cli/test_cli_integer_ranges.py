"""Integer flags out of range are refused by argparse, naming the flag and its range, before any work."""

from __future__ import annotations

import pytest

from modularforge.cli.main import main
from modularforge.training.preflight import MAX_EXPERT_IDX, MAX_SEED

HUGE = str(2**70)


@pytest.mark.parametrize(
    ("argv", "flag", "maximum"),
    [
        (["generate", "--shared", "missing.safetensors", "--seed", HUGE, "hi"], "--seed", MAX_SEED),
        (["train-expert", "--shared", "missing.safetensors", "--domain", "english",
          "--expert-idx", HUGE, "--out", "x.safetensors"], "--expert-idx", MAX_EXPERT_IDX),
        (["train-shared", "--out", "x.safetensors", "--seed", "-1"], "--seed", MAX_SEED),
    ],
)  # fmt: skip
def test_an_out_of_range_integer_names_its_flag_and_range(argv, flag, maximum, capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: must be an integer from 0 to {maximum}" in err
    assert "Overflow" not in err and "Traceback" not in err


def test_negative_control_an_in_range_seed_gets_past_the_parser(capsys) -> None:
    """The same command with seed 7 fails later, on the incomplete model choice, not on the seed."""
    status = main(["generate", "--shared", "missing.safetensors", "--seed", "7", "hi"])
    assert status == 2
    err = capsys.readouterr().err
    assert "argument --seed" not in err and "say which model to use" in err

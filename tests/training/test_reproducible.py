"""A rerun on one machine is bit-identical once the session is fixed; the thread knob works."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from intra_op_threads import torch_threads

from modularforge.training.reproducible import (
    THREADS_VARIABLE,
    reproducible_session,
    session_threads,
)

# A short phase 1 on the tiny preset in a fresh process; prints the trunk's fingerprint.
PROBE = """
from modularforge import ModelConfig
from modularforge.files.checkpoint import shared_fingerprint
from modularforge.training.reproducible import reproducible_session
from modularforge.training.train import TrainSettings, train_shared
reproducible_session(seed=0)
settings = TrainSettings(steps=12, batch_size=8, seq_len=64, eval_every=12, eval_batches=1, progress=False)
shared, _ = train_shared(ModelConfig.tiny().replace(d_ff=1024), settings)
print(shared_fingerprint(shared))
"""


def trained_fingerprint(threads: str) -> str:
    env = {**os.environ, THREADS_VARIABLE: threads}
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def test_a_rerun_trains_the_same_bits() -> None:
    assert trained_fingerprint("1") == trained_fingerprint("1")


def test_negative_control_another_thread_count_changes_the_bits() -> None:
    """Without a fixed thread count the bits would depend on the machine's cores."""
    assert trained_fingerprint("1") != trained_fingerprint("2")


def test_session_sets_threads_seed_and_determinism(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(THREADS_VARIABLE, raising=False)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    with torch_threads(torch.get_num_threads()):
        try:
            session = reproducible_session(seed=3)
            first = torch.rand(3)
            assert session.threads == 1 == torch.get_num_threads()
            assert session.deterministic and torch.are_deterministic_algorithms_enabled()
            reproducible_session(seed=3)
            assert torch.equal(first, torch.rand(3))
        finally:
            torch.use_deterministic_algorithms(was_deterministic)


def test_thread_count_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(THREADS_VARIABLE, "3")
    assert session_threads() == 3
    assert session_threads(2) == 2  # an explicit argument wins
    monkeypatch.setenv(THREADS_VARIABLE, "many")
    with pytest.raises(ValueError, match="MODULARFORGE_NUM_THREADS='many' is not a whole number"):
        session_threads()


@pytest.mark.parametrize("bad", [0, -1, 2000, 1.5, True, "2"])
def test_bad_thread_counts_are_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="threads must be an int from 1 to 1024"):
        session_threads(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [-1, 2**63, 1.0, None, "0"])
def test_bad_seeds_are_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="seed must be an int"):
        reproducible_session(seed=bad)  # type: ignore[arg-type]

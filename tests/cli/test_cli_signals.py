"""SIGTERM stops a command as Ctrl-C does: one line, no traceback, nothing half-written."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from modularforge.cli.errors import Terminated, exit_line
from modularforge.repo_paths import REPO_ROOT


@pytest.mark.parametrize(
    ("signum", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"]
)
def test_a_signal_mid_training_ends_in_one_line_and_leaves_no_file(tmp_path, signum, status):
    out = tmp_path / "trunk.safetensors"
    command = [
        sys.executable, "-m", "modularforge", "train-shared", "--preset", "tiny",
        "--steps", "100000", "--batch-size", "2", "--seq-len", "16", "--out", str(out),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    process = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    seen = b""
    while b"shared trunk" not in seen:  # the progress bar: training has started
        chunk = os.read(process.stderr.fileno(), 4096)
        assert chunk, (seen, process.wait())  # the command ended before training
        seen += chunk
    process.send_signal(signum)
    stderr = (seen + process.communicate(timeout=60)[1]).decode("utf-8", "replace")
    assert process.returncode == status, stderr
    assert stderr.strip().splitlines()[-1] == (
        "error: interrupted; rerun the same command to resume from the last save"
    )
    assert "Traceback" not in stderr
    assert not out.exists()


def test_negative_control_only_sigterm_maps_to_143():
    assert exit_line(Terminated())[0] == 143
    assert exit_line(KeyboardInterrupt())[0] == 130

"""The training chapters pass their notebook test on another CPU, and a real regression fails it.

`make test` runs every notebook on this machine's own kernels. Here the training
chapters run again, in a fresh process, as a reader's different CPU would run
them: ATen, MKL and oneDNN capped to other vector instructions, and another
thread count. Their stored outputs must still pass (trained numbers within the
measured tolerance, everything else exact), and every verdict with them. The
negative controls rerun chapter 3's training with a regression planted (a
changed learning rate; a trunk that is not frozen) and must fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.other_cpu

REPO_ROOT = Path(__file__).resolve().parents[2]
SANITIZE = REPO_ROOT / "tests" / "nbval_sanitize.cfg"
CHAPTER_3 = REPO_ROOT / "book" / "03_forward_interleaving.ipynb"
CHAPTER_8 = REPO_ROOT / "book" / "08_assembling_the_mixture.ipynb"

#: No vector extensions past SSE4.2 anywhere, two threads: the farthest from the stored run.
PLAIN_CPU = {
    "ATEN_CPU_CAPABILITY": "default",
    "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
    "ONEDNN_MAX_CPU_ISA": "SSE41",
    "MODULARFORGE_NUM_THREADS": "2",
}
#: An AVX2 machine without AVX-512 (the machine type readers and CI most often have).
AVX2_CPU = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "MODULARFORGE_NUM_THREADS": "2",
}


def nbval(
    notebook: Path, env: dict[str, str], rootdir: Path = REPO_ROOT
) -> subprocess.CompletedProcess:
    """Run nbval on one notebook in a fresh process, with the tolerance plugin loaded."""
    command = [
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "nbval_tolerance",
        "--nbval", "--nbval-current-env", "--nbval-sanitize-with", str(SANITIZE),
        "--nbval-cell-timeout=1800", f"--rootdir={rootdir}", str(notebook),
    ]  # fmt: skip
    if rootdir != REPO_ROOT:
        (rootdir / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
        command[-1:-1] = ["-c", str(rootdir / "pytest.ini")]
    full_env = {**os.environ, **env, "PYTHONPATH": str(REPO_ROOT / "tests")}
    full_env.pop("PYTEST_ADDOPTS", None)
    return subprocess.run(command, cwd=rootdir, env=full_env, capture_output=True, text=True)


@pytest.mark.parametrize(
    ("notebook", "env"),
    [(CHAPTER_3, PLAIN_CPU), (CHAPTER_8, AVX2_CPU)],
    ids=["chapter-3-on-a-plain-cpu", "chapter-8-on-an-avx2-cpu"],
)
def test_a_training_chapter_passes_on_another_cpu(notebook: Path, env: dict[str, str]) -> None:
    done = nbval(notebook, env)
    assert done.returncode == 0, done.stdout[-4000:]
    assert " passed" in done.stdout and "failed" not in done.stdout


def trimmed_chapter_3(tmp_path: Path, old: str, new: str) -> Path:
    """Chapter 3 up to its training cell's checks, with `old` replaced by `new` in it."""
    notebook = json.loads(CHAPTER_3.read_text(encoding="utf-8"))
    cells = notebook["cells"]
    last = next(
        i for i, c in enumerate(cells) if "the fresh expert starts higher" in "".join(c["source"])
    )
    kept = [c for c in cells[: last + 1] if c["cell_type"] == "code"]
    training = next(c for c in kept if old in "".join(c["source"]))
    training["source"] = "".join(training["source"]).replace(old, new)
    notebook["cells"] = kept
    path = tmp_path / "chapter3_regressed.ipynb"
    path.write_text(json.dumps(notebook), encoding="utf-8")
    return path


REGRESSIONS = {
    "learning-rate-halved": (
        "shared, phase1 = train_shared(config, settings)",
        # in the (unchecked) training cell, so only the checked results can catch it
        "import dataclasses\nsettings = dataclasses.replace(settings, lr=5e-3)\n"
        "shared, phase1 = train_shared(config, settings)",
    ),
    "trunk-not-frozen": (
        'expert_model, phase2 = train_expert(shared, "python", settings)',
        # a freeze() that forgot its job: train_expert calls it, and the trunk stays trainable
        "shared.unfreeze()\nSharedComponents.freeze = lambda self: self\n"
        'expert_model, phase2 = train_expert(shared, "python", settings)',
    ),
}


@pytest.mark.parametrize("regression", REGRESSIONS)
def test_negative_control_a_real_regression_still_fails(tmp_path: Path, regression: str) -> None:
    notebook = trimmed_chapter_3(tmp_path, *REGRESSIONS[regression])
    done = nbval(notebook, AVX2_CPU, rootdir=tmp_path)
    assert done.returncode != 0, done.stdout[-3000:]
    assert "1 failed" in done.stdout or "2 failed" in done.stdout, done.stdout[-3000:]

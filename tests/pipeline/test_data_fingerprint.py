"""A finished run is only "verified" against the data it was trained on.

The manifest records the SHA-256 of the tokenizer and of every corpus file; a rerun
whose data differ is refused before it verifies or trains anything.
"""

from __future__ import annotations

import json
import shutil

import pytest

from modularforge.pipeline.manifest import MANIFEST_NAME
from modularforge.pipeline.run import PipelineSettings, run_pipeline
from modularforge.repo_paths import REPO_ROOT
from modularforge.training.data import DATA_ENV_VAR

FAST = dict(
    steps=2, expert_steps=2, router_steps=1, batch_size=2, seq_len=16, top_k=(1,),
    checkpoint_every=1, eval_max_batches=1, dense_baseline=False, progress=False,
    mixing_steps=0,
)  # fmt: skip
QUIET = dict(log=lambda _: None)

pytestmark = pytest.mark.usefixtures("one_thread_per_module")


@pytest.fixture
def data_copy(tmp_path, monkeypatch):
    """A copy of data/ that the run reads (the test may edit it)."""
    copy = tmp_path / "data"
    shutil.copytree(REPO_ROOT / "data", copy)
    monkeypatch.setenv(DATA_ENV_VAR, str(copy))
    return copy


@pytest.mark.parametrize("edit", ["corpus/licenses.txt", "tokenizer-2048.json"])
def test_a_rerun_on_changed_data_is_refused(tmp_path, data_copy, edit: str) -> None:
    out = tmp_path / "run"
    run_pipeline(out, PipelineSettings(**FAST), **QUIET)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with open(data_copy / edit, "a", encoding="utf-8") as handle:
        handle.write("\n")  # one byte more: same text to a reader, other data to the run
    name = "tokenizer" if edit.startswith("tokenizer") else "corpus/licenses"
    with pytest.raises(ValueError, match=rf"trained on other data: {name} changed since"):
        run_pipeline(out, PipelineSettings(**FAST), **QUIET)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_negative_control_the_same_data_verifies_and_an_old_manifest_still_does(
    tmp_path, data_copy
) -> None:
    out = tmp_path / "run"
    run_pipeline(out, PipelineSettings(**FAST), **QUIET)
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert set(manifest["inputs"]) == {
        "tokenizer",
        "corpus/english",
        "corpus/licenses",
        "corpus/python",
    }
    again = run_pipeline(out, PipelineSettings(**FAST), **QUIET)
    assert not any(event.startswith("trained") for event in again.events), again.events
    del manifest["inputs"]  # a run recorded before the fingerprint existed
    (out / MANIFEST_NAME).write_text(json.dumps(manifest))
    run_pipeline(out, PipelineSettings(**FAST), **QUIET)

"""The pipeline writes and deletes only its own files, only inside `--out` (issue 12, item 2)."""

import os

import pytest

from modularforge.pipeline.folders import (
    UnsafeOutputError,
    output_files,
    prepare_out_dir,
    remove_states,
    state_names,
    state_path,
)
from modularforge.pipeline.run import PipelineSettings, pipeline_domains, run_pipeline

FAST = dict(
    steps=2, expert_steps=2, router_steps=1, batch_size=2, seq_len=16, top_k=(1,),
    checkpoint_every=1, eval_max_batches=1, dense_baseline=False, progress=False,
)  # fmt: skip
DOMAINS = ["english", "licenses", "python"]

pytestmark = pytest.mark.usefixtures("one_thread_per_module")


def _victim_folder(tmp_path):
    """A folder outside --out with files the pipeline must never touch."""
    victim = tmp_path / "victim"
    victim.mkdir()
    for name in ("precious.safetensors", "shared.state.safetensors", "expert-0.state.safetensors"):
        (victim / name).write_bytes(b"not yours")
    return victim


@pytest.mark.parametrize("sub", ["state", "experts", "dense"])
@pytest.mark.parametrize("fresh", [True, False], ids=["fresh", "after-a-run-began"])
def test_a_symlinked_subfolder_is_refused_and_its_target_untouched(tmp_path, sub, fresh):
    victim = _victim_folder(tmp_path)
    before = {p.name: p.read_bytes() for p in victim.iterdir()}
    out = tmp_path / "out"
    out.mkdir()
    if not fresh:
        (out / "manifest.json").write_text("{}")  # a run that began, then was tampered with
    os.symlink(victim, out / sub)
    with pytest.raises(UnsafeOutputError, match=rf"{sub} is a symbolic link"):
        run_pipeline(out, PipelineSettings(**FAST), log=lambda _: None, domains=DOMAINS)
    assert {p.name: p.read_bytes() for p in victim.iterdir()} == before


@pytest.mark.parametrize("which", [0, 1, 2, 3, 4, -1, -3])
def test_an_output_file_that_is_a_symlink_is_refused(tmp_path, which):
    victim = tmp_path / "victim.safetensors"
    victim.write_bytes(b"not yours")
    out = prepare_out_dir(tmp_path / "out", DOMAINS)
    target = output_files(out, DOMAINS)[which]
    os.symlink(victim, target)
    with pytest.raises(UnsafeOutputError, match="symbolic link"):
        prepare_out_dir(out, DOMAINS)
    assert victim.read_bytes() == b"not yours"


@pytest.mark.parametrize("sub", ["state", "experts", "dense"])
def test_a_file_where_a_subfolder_belongs_is_refused(tmp_path, sub):
    out = tmp_path / "out"
    out.mkdir()
    (out / sub).write_bytes(b"a file")
    with pytest.raises(UnsafeOutputError, match="not a folder"):
        prepare_out_dir(out, DOMAINS)
    assert (out / sub).read_bytes() == b"a file"


def test_clean_up_deletes_only_states_the_pipeline_writes(tmp_path):
    out = prepare_out_dir(tmp_path / "out", DOMAINS)
    foreign = [out / "state" / "notes.safetensors", out / "state" / "expert-9.state.safetensors"]
    for path in foreign:
        path.write_bytes(b"keep me")
    ours = [state_path(out, name) for name in state_names(len(DOMAINS))]
    for path in ours:
        path.write_bytes(b"stale")
    assert sorted(remove_states(out, state_names(len(DOMAINS)))) == sorted(ours)
    assert all(p.read_bytes() == b"keep me" for p in foreign)


def test_a_state_file_that_is_a_symlink_is_not_deleted_through(tmp_path):
    victim = tmp_path / "victim.safetensors"
    victim.write_bytes(b"not yours")
    out = prepare_out_dir(tmp_path / "out", DOMAINS)
    os.symlink(victim, state_path(out, "shared"))
    with pytest.raises(UnsafeOutputError):
        remove_states(out, ["shared"])
    assert victim.read_bytes() == b"not yours"


def test_a_fresh_run_keeps_foreign_files_in_its_state_folder(tmp_path):
    out = prepare_out_dir(tmp_path / "out", DOMAINS)
    foreign = out / "state" / "my-notes.safetensors"
    foreign.write_bytes(b"keep me")
    run_pipeline(out, PipelineSettings(**FAST), log=lambda _: None, domains=DOMAINS)
    assert foreign.read_bytes() == b"keep me"
    assert not any(state_path(out, n).exists() for n in state_names(len(DOMAINS)))


@pytest.mark.parametrize(
    ("domains", "error", "message"),
    [
        (["english", "english"], ValueError, "lists a domain twice"),
        (["english", "klingon"], ValueError, r"unknown domain\(s\) \['klingon'\]"),
        ([], ValueError, "domains is empty"),
        ("english", TypeError, "must be a list of domain names"),
        (["english", 3], TypeError, "must be a list of domain names"),
    ],
)
def test_bad_domains_are_refused_before_anything_trains_or_is_written(
    tmp_path, domains, error, message
):
    out = tmp_path / "out"
    with pytest.raises(error, match=message):
        run_pipeline(out, PipelineSettings(**FAST), log=lambda _: None, domains=domains)
    assert not out.exists()  # nothing was created, so nothing trained first


def test_negative_control_good_domains_pass_the_same_check() -> None:
    assert pipeline_domains(["python", "english"]) == ["python", "english"]
    assert pipeline_domains(None) == DOMAINS

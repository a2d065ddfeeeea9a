"""A save that fails after training says where the finished work went, or saves it nearby (item 4)."""

import errno
import os
from pathlib import Path

import pytest

import modularforge.files.atomic as atomic
import modularforge.files.output_paths as output_paths
from modularforge.cli.main import main
from modularforge.files.checkpoint import load_shared
from modularforge.files.output_paths import UnsavedWorkError, save_or_rescue
from modularforge.pipeline.run import PipelineSettings, run_pipeline, state_path

CODES = [errno.ENOSPC, errno.EROFS, errno.EIO, errno.EDQUOT]
TINY = ["--steps", "1", "--batch-size", "2", "--seq-len", "16", "--no-progress"]


@pytest.fixture
def temp_folder(tmp_path, monkeypatch):
    folder = tmp_path / "system-tmp"
    folder.mkdir()
    monkeypatch.setattr(output_paths.tempfile, "gettempdir", lambda: str(folder))
    return folder


def _saver(refused, code):
    """A save that writes `b"model"` except into the folders in `refused` (and the target)."""
    written = []

    def save(path: Path) -> Path:
        if path.name == "model.safetensors" or path.parent in refused:
            raise OSError(code, os.strerror(code), str(path))
        path.write_bytes(b"model")
        written.append(path)
        return path

    return save, written


@pytest.mark.parametrize("code", CODES)
@pytest.mark.parametrize("where", ["next to the target", "temporary folder", "nowhere"])
def test_the_finished_work_is_saved_elsewhere_and_named(tmp_path, temp_folder, code, where):
    target = tmp_path / "out" / "model.safetensors"
    target.parent.mkdir()
    refused = {"next to the target": set(), "temporary folder": {target.parent}}.get(
        where, {target.parent, temp_folder}
    )
    save, written = _saver(refused, code)
    with pytest.raises(UnsavedWorkError) as caught:
        save_or_rescue(save, target, "shared trunk")
    message, error = str(caught.value), caught.value
    assert error.errno == code and error.filename == str(target) and os.strerror(code) in message
    assert not target.exists()
    if where == "nowhere":
        assert written == [] and "the trained weights are lost" in message
        assert str(target.parent) in message and str(temp_folder) in message  # what was tried
    else:
        (rescued,) = written
        expected = target.parent if where == "next to the target" else temp_folder
        assert rescued.parent == expected and rescued.read_bytes() == b"model"
        assert str(rescued) in message and f"move it to {target}" in message
        assert rescued.name == "model.unsaved.safetensors"


def test_a_kept_training_state_is_named_when_nothing_takes_the_work(tmp_path, temp_folder):
    state = tmp_path / "run.state.safetensors"
    state.write_bytes(b"state")
    save, _ = _saver({tmp_path, temp_folder}, errno.ENOSPC)
    with pytest.raises(UnsavedWorkError, match="resumes from it") as caught:
        save_or_rescue(save, tmp_path / "model.safetensors", "expert 0", state=state)
    assert str(state) in str(caught.value)


def test_a_save_that_works_is_not_touched(tmp_path):
    save, written = _saver(set(), errno.ENOSPC)
    target = tmp_path / "elsewhere.safetensors"
    assert save_or_rescue(save, target, "x") == target and written == [target]


def _refuse_rename_onto(monkeypatch, targets, code):
    """The final rename onto each of `targets` fails, as on a disk that fills at the last step."""
    real_replace = atomic.os.replace

    def replace(src, dst):
        if Path(dst) in targets:
            raise OSError(code, os.strerror(code), str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace)


@pytest.mark.parametrize("code", CODES)
def test_the_cli_says_where_the_trunk_went(tmp_path, capsys, monkeypatch, temp_folder, code):
    out = tmp_path / "shared.safetensors"
    _refuse_rename_onto(monkeypatch, {out}, code)
    assert main(["train-shared", "--out", str(out), *TINY]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and os.strerror(code) in err
    (rescued,) = tmp_path.glob("shared.unsaved*.safetensors")
    assert str(rescued) in err and not out.exists()
    assert load_shared(rescued).config.n_layers > 0  # the whole trained trunk, loadable


@pytest.mark.parametrize("unit", ["expert 1", "router top-1"])
def test_the_pipeline_keeps_its_state_and_a_rerun_finishes(tmp_path, monkeypatch, unit):
    from modularforge.pipeline.run import expert_path, router_path

    out = tmp_path / "run"
    settings = PipelineSettings(
        steps=2, expert_steps=2, router_steps=2, batch_size=2, seq_len=16, top_k=(1,),
        checkpoint_every=1, eval_max_batches=1, dense_baseline=False, progress=False,
    )  # fmt: skip
    target = expert_path(out, 1, "licenses") if unit == "expert 1" else router_path(out, 1)
    state = state_path(out, "expert-1" if unit == "expert 1" else "router-top1")
    _refuse_rename_onto(monkeypatch, {target}, errno.ENOSPC)
    with pytest.raises(UnsavedWorkError) as caught:
        run_pipeline(out, settings, log=lambda _: None)
    assert str(target) in str(caught.value) and state.is_file()  # the finished state is kept
    rescued = list(target.parent.glob(f"{target.stem}.unsaved*"))
    assert len(rescued) == 1 and str(rescued[0]) in str(caught.value)
    monkeypatch.undo()
    result = run_pipeline(out, settings, log=lambda _: None)
    assert target.is_file() and not state.exists()
    assert result.events[0] == "skipped shared"


def test_a_second_rescue_keeps_the_first(tmp_path, temp_folder):
    target = tmp_path / "model.safetensors"
    for _ in range(2):
        save, _ = _saver(set(), errno.ENOSPC)
        with pytest.raises(UnsavedWorkError):
            save_or_rescue(save, target, "x")
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == [
        "model.unsaved-2.safetensors", "model.unsaved.safetensors",
    ]  # fmt: skip

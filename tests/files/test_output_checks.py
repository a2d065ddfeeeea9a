"""Output locations are checked before the first training step, so no training is lost (item 4)."""

import errno
import os

import pytest

import modularforge.files.output_paths as output_paths
import modularforge.training.train as train
from modularforge.cli.main import main
from modularforge.files.output_paths import check_output_folder, check_writable_file
from modularforge.pipeline.run import PipelineSettings, run_pipeline

TINY = ["--steps", "1", "--batch-size", "2", "--seq-len", "16", "--no-progress"]


@pytest.fixture
def no_training(monkeypatch):
    """Training fails the test: every refusal below must come before it."""

    def fit(*args, **kwargs):
        raise AssertionError("training started before the output was checked")

    monkeypatch.setattr(train, "fit", fit)


def _read_only_probe(monkeypatch, code=errno.EROFS):
    real_open = os.open

    def refusing(path, flags, *args):
        if flags & os.O_CREAT:
            raise OSError(code, os.strerror(code), str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(output_paths.os, "open", refusing)


def _location(tmp_path, kind):
    """An output file path of each bad kind."""
    if kind == "missing folder":
        return tmp_path / "no" / "such" / "x.safetensors"
    if kind == "a folder":
        return tmp_path
    if kind == "under a file":
        (tmp_path / "file").write_text("x")
        return tmp_path / "file" / "x.safetensors"
    if kind == "a fifo":
        os.mkfifo(tmp_path / "fifo")
        return tmp_path / "fifo"
    raise AssertionError(kind)


KINDS = ["missing folder", "a folder", "under a file", "a fifo"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("command", ["train-shared", "train-expert"])
def test_an_unwritable_file_output_is_refused_before_training(
    tmp_path, capsys, no_training, kind, command
):
    out = _location(tmp_path, kind)
    extra = ["--shared", str(tmp_path / "trunk"), "--domain", "english"] * (
        command == "train-expert"
    )
    assert main([command, *extra, "--out", str(out), *TINY]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "--out" in err


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES, errno.ENOSPC])
def test_a_read_only_location_is_refused_before_training(
    tmp_path, capsys, monkeypatch, no_training, code
):
    _read_only_probe(monkeypatch, code)
    assert main(["train-shared", "--out", str(tmp_path / "x.safetensors"), *TINY]) == 2
    assert os.strerror(code) in capsys.readouterr().err


@pytest.mark.parametrize("command", ["train-shared", "pipeline"])
def test_an_empty_output_path_is_refused(capsys, no_training, command):
    with pytest.raises(SystemExit) as caught:
        main([command, "--out", "", *TINY])
    assert caught.value.code == 2 and "empty path" in capsys.readouterr().err


def test_pipeline_seeds_json_is_checked_before_summarising(tmp_path, capsys):
    assert main(["pipeline-seeds", str(tmp_path), "--json", str(tmp_path / "a" / "b.json")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["under a file", "read-only"])
def test_train_experts_folder_is_checked(tmp_path, monkeypatch, kind):
    if kind == "under a file":
        (tmp_path / "file").write_text("x")
        with pytest.raises(NotADirectoryError):
            check_output_folder(tmp_path / "file" / "out")
    else:
        _read_only_probe(monkeypatch)
        with pytest.raises(OSError, match="cannot write into this folder"):
            check_output_folder(tmp_path / "new" / "out")


def test_a_good_location_passes(tmp_path):
    assert check_writable_file(tmp_path / "x.safetensors").name == "x.safetensors"
    assert check_output_folder(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert list(tmp_path.iterdir()) == []  # the probes leave nothing behind


def test_the_pipeline_checks_its_folders_before_its_first_step(tmp_path, monkeypatch, no_training):
    out = tmp_path / "run"
    out.mkdir()
    _read_only_probe(monkeypatch)
    fast = dict(steps=1, expert_steps=1, router_steps=1, batch_size=2, seq_len=16, progress=False)
    with pytest.raises(OSError, match="cannot write into this folder") as caught:
        run_pipeline(out, PipelineSettings(**fast), log=lambda _: None)
    assert caught.value.errno == errno.EROFS

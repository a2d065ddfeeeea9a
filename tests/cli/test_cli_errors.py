"""Every error a user or their machine causes ends as one line and a nonzero exit (item 14)."""

import errno
import os

import pytest
import torch

import modularforge.files.atomic as atomic
from modularforge.cli.errors import describe, exit_line
from modularforge.cli.main import main
from modularforge.files.atomic import atomic_write_bytes
from modularforge.files.run_lock import FolderLockedError
from modularforge.training.preflight import SettingsError
from modularforge.training.train import TrainingDivergedError

TINY = ["--steps", "1", "--batch-size", "2", "--seq-len", "16", "--no-progress"]

#: (exception, words the one line must contain)
MAPPED = [
    (OSError(errno.ENOSPC, "No space left on device", "/d/x.safetensors"), "disk is full"),
    (OSError(errno.EDQUOT, "Disk quota exceeded", "/d/x.safetensors"), "quota"),
    (OSError(errno.EROFS, "Read-only file system", "/d/x.safetensors"), "read-only"),
    (OSError(errno.EIO, "Input/output error", "/d/x.safetensors"), "disk or network storage"),
    (OSError(errno.ENAMETOOLONG, "File name too long", "/d/x"), "choose a shorter path"),
    (FileExistsError(errno.EEXIST, "File exists", "/d/x"), "already there"),
    (NotADirectoryError(errno.ENOTDIR, "Not a directory", "/d/x"), "folder"),
    (PermissionError(errno.EACCES, "Permission denied", "/d/x"), "permission denied"),
    (TrainingDivergedError("loss became nan at step 3"), "training diverged"),
    (torch.OutOfMemoryError("CUDA out of memory. Tried"), "lower --batch-size"),
    (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried"), "out of memory"),
    (MemoryError(), "out of memory"),
    (FolderLockedError("/d is in use by process 7"), "process 7"),
    (SettingsError("TrainSettings.lr must be > 0.0, got inf"), "TrainSettings.lr"),
    (ValueError("line one\nline two"), "line one line two"),
]


@pytest.mark.parametrize(("error", "words"), MAPPED, ids=[type(e).__name__ for e, _ in MAPPED])
def test_each_error_becomes_one_line(error, words):
    status, line = exit_line(error)
    assert status == 2 and words in line.lower() or words in line
    assert "\n" not in line
    if isinstance(error, OSError) and error.filename:
        assert error.filename in line


@pytest.mark.parametrize("error", [RuntimeError("a bug"), KeyError("x"), TypeError("y")])
def test_a_bug_keeps_its_traceback(error):
    assert describe(error) is None and exit_line(error) is None


def test_ctrl_c_exits_130():
    assert exit_line(KeyboardInterrupt())[0] == 130


def _run(argv, capsys):
    status = main(argv)
    err = capsys.readouterr().err
    assert status != 0 and err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_pipeline_out_a_file(tmp_path, capsys):
    out = tmp_path / "a-file"
    out.write_text("x")
    err = _run(["pipeline", "--out", str(out), "--no-progress"], capsys)
    assert "is not a folder" in err and out.read_text() == "x"


@pytest.mark.parametrize("device", ["bogus", "meta", "cuda:99", "tpu"])
@pytest.mark.parametrize("command", ["train-shared", "pipeline"])
def test_a_device_that_cannot_train(tmp_path, capsys, device, command):
    out = tmp_path / ("shared.safetensors" if command == "train-shared" else "run")
    err = _run([command, "--out", str(out), "--device", device, "--no-progress"], capsys)
    assert "device" in err and not out.exists()


@pytest.mark.parametrize("batch", ["100000000", "2000000000"])
def test_an_absurd_batch_size(tmp_path, capsys, batch):
    out = tmp_path / "shared.safetensors"
    argv = ["train-shared", "--out", str(out), "--batch-size", batch, "--seq-len", "128"]
    assert "lower --batch-size" in _run([*argv, "--no-progress"], capsys)
    assert not out.exists()


def test_a_diverged_loss(tmp_path, capsys):
    out = tmp_path / "shared.safetensors"
    argv = ["train-shared", "--out", str(out), "--lr", "1e30", "--steps", "4", "--batch-size", "2"]
    assert "training diverged" in _run([*argv, "--seq-len", "16", "--no-progress"], capsys)
    assert not out.exists()


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO, errno.EDQUOT, errno.EROFS])
def test_a_failing_disk_during_the_save(tmp_path, capsys, monkeypatch, code):
    def failing_write(fd, data):
        raise OSError(code, os.strerror(code))

    real_unlink = atomic.Path.unlink

    def failing_unlink(self, missing_ok=False):  # the storage refuses the clean-up too
        if ".tmp-" not in self.name:
            return real_unlink(self, missing_ok=missing_ok)
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))

    monkeypatch.setattr(atomic, "_write_all", failing_write)
    monkeypatch.setattr(atomic.Path, "unlink", failing_unlink)
    out = tmp_path / "shared.safetensors"
    err = _run(["train-shared", "--out", str(out), *TINY], capsys)
    assert str(out) in err and os.strerror(code) in err  # the first error, about the target


@pytest.mark.parametrize("code", [errno.EROFS, errno.ENOSPC, errno.EACCES])
def test_a_temp_file_that_cannot_be_created_names_the_target(tmp_path, monkeypatch, code):
    real_open = os.open

    def refusing_open(path, flags, *args):
        if flags & os.O_CREAT:
            raise OSError(code, os.strerror(code), path)
        return real_open(path, flags, *args)

    monkeypatch.setattr(atomic.os, "open", refusing_open)
    target = tmp_path / "x.bin"
    with pytest.raises(OSError) as caught:
        atomic_write_bytes(target, b"data")
    assert caught.value.errno == code and caught.value.filename == str(target)
    assert caught.value.__context__ is None or caught.value.__suppress_context__


@pytest.mark.parametrize("length", [200, 230, 255])
def test_long_names_that_fit_are_written(tmp_path, length):
    target = tmp_path / ("a" * (length - 4) + ".bin")
    atomic_write_bytes(target, b"data")
    assert target.read_bytes() == b"data" and [p.name for p in tmp_path.iterdir()] == [target.name]


def test_a_name_too_long_is_one_line(tmp_path, capsys):
    out = tmp_path / ("a" * 300 + ".safetensors")
    err = _run(["train-shared", "--out", str(out), *TINY], capsys)
    assert "too long" in err

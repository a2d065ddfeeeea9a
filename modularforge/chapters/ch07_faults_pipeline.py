"""Faults around a pipeline run and the command line, for chapter 7's catalogue.

`faults_loading` covers hostile files met while loading. These are what goes
wrong around a run that writes a folder over many minutes: a link planted inside
`--out`, an output that is one of the inputs or cannot be written, a disk that
fills at the last save, settings that could only fail late, a damaged training
state, two runs on one folder, another command's manifest, a folder whose files
no longer match its manifest, and the command line's one-line errors.

Two kinds of outcome are not exceptions the package raises, and are turned into
one here so the catalogue can print them like the rest:

* `CommandLineError`: what `python -m modularforge` printed for an error, with its
  exit status (the command returns the status; it never raises);
* `Recovered`: what the package logged when it recovered on its own (a bad training
  state is set aside and retrained; a finished run verifies without writing).

`tests/chapters/test_ch07_faults_pipeline.py` triggers every entry and checks type and message.
"""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any
from unittest import mock

from modularforge.chapters.ch07_faults import Fault, _trunk
from modularforge.chapters.ch07_faults_loading import rewrite_checkpoint, state_parts
from modularforge.files.checkpoint import CheckpointError, save_shared
from modularforge.files.output_paths import UnsavedWorkError, save_or_rescue
from modularforge.files.run_lock import FolderLockedError
from modularforge.pipeline.folders import UnsafeOutputError
from modularforge.pipeline.manifest import ManifestError
from modularforge.repo_paths import BOOK_DATA_DIR
from modularforge.training.preflight import SettingsError

__all__ = ["PIPELINE_FAULTS", "STORED_RUN", "CommandLineError", "Recovered"]

#: The smallest pipeline run that still has every phase (no dense baseline: not needed here).
FAST_RUN = dict(
    steps=1, expert_steps=1, router_steps=1, batch_size=2, seq_len=16, top_k=(1,),
    checkpoint_every=0, eval_max_batches=1, dense_baseline=False, progress=False,
)  # fmt: skip
#: On the CPU everywhere, so the catalogue's lines read the same on every machine.
TINY_ARGS = ["--steps", "1", "--batch-size", "2", "--seq-len", "16", "--no-progress"]
TINY_CLI = [*TINY_ARGS, "--device", "cpu"]


class CommandLineError(Exception):
    """The line `python -m modularforge` printed for an error, and its exit status."""


class Recovered(Exception):
    """What the package logged while it recovered on its own (raised only by the catalogue)."""


def _command(argv: list[str]) -> int:
    """Run the command line; raise `CommandLineError` with what it printed if it failed."""
    from modularforge.cli.main import main

    err = io.StringIO()
    with redirect_stderr(err), redirect_stdout(io.StringIO()):
        status = main(argv)
    if status != 0:
        raise CommandLineError(f"exit status {status}, stderr: {err.getvalue().strip()}")
    return status


#: A finished tiny run stored with the book (its dense baseline left out to keep it small).
STORED_RUN = BOOK_DATA_DIR / "pipeline-tiny"


def _copy_of_stored(directory: Path) -> Path:
    return Path(shutil.copytree(STORED_RUN, directory / "run"))


def _read_only_storage() -> Any:
    """Every file creation fails as on a read-only mount (reads still work)."""
    real_open = os.open

    def ro_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)

    return mock.patch("os.open", ro_open)


def _run(out: Path, **changes: Any) -> object:
    from modularforge.pipeline.run import PipelineSettings, run_pipeline

    return run_pipeline(out, PipelineSettings(**{**FAST_RUN, **changes}), log=lambda _: None)


# --------------------------------------------------------------------------- triggers


def _linked_state_folder(directory: Path) -> object:
    yours = directory / "your-files"
    yours.mkdir()
    (yours / "thesis.safetensors").write_bytes(b"years of work")
    out = directory / "run"
    out.mkdir()
    (out / "state").symlink_to(yours)
    return _run(out)


def _out_is_the_trunk(directory: Path) -> object:
    trunk = save_shared(_trunk(), directory / "shared.safetensors")
    argv = ["train-expert", "--shared", str(trunk), "--domain", "english", "--out", str(trunk)]
    return _command([*argv, *TINY_CLI])


def _out_in_a_missing_folder(directory: Path) -> object:
    out = directory / "no-such-folder" / "shared.safetensors"
    return _command(["train-shared", "--out", str(out), *TINY_CLI])


def _disk_full_at_the_save(directory: Path) -> object:
    target = directory / "shared.safetensors"
    trunk = _trunk()

    def save(path: Path) -> Path:
        if path == target:  # the disk fills exactly when the finished trunk is written
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return save_shared(trunk, path)

    return save_or_rescue(save, target, "shared trunk")


def _settings(**changes: Any) -> object:
    from modularforge.pipeline.run import PipelineSettings

    return PipelineSettings(**{**FAST_RUN, **changes})


def _recover(state: Path, settings: Any, parts: Any, name: str, prefix: str) -> object:
    """The pipeline's recovery around a resume from `state`; its log line raised as `Recovered`."""
    from modularforge.files.state_recovery import train_or_set_aside
    from modularforge.training.training_state import load_training_state

    def note(event: str, message: str) -> None:
        raise Recovered(message)  # the pipeline logs it, then trains from step 0

    return train_or_set_aside(
        state,
        lambda: load_training_state(state, **parts(), settings=settings),
        note,
        f"set aside state {name}",
        prefix,
    )


def _tampered_state(directory: Path) -> object:
    from modularforge.training.train import TrainingHistory
    from modularforge.training.training_state import save_training_state

    settings, parts = state_parts()
    state = directory / "state" / "expert-1.state.safetensors"
    state.parent.mkdir()
    save_training_state(state, **parts(), step=0, settings=settings, history=TrainingHistory())
    rewrite_checkpoint(state, metadata={"step": 10**9})
    return _recover(state, settings, parts, "expert-1", "phase 2")


def _garbage_state(directory: Path) -> object:
    settings, parts = state_parts()
    state = directory / "state" / "shared.state.safetensors"
    state.parent.mkdir()
    state.write_bytes(b"\x00" * 100)  # e.g. a disk that lost the file's blocks
    return _recover(state, settings, parts, "shared", "phase 1")


def _second_run(directory: Path) -> object:
    from modularforge.files.run_lock import locked_folder

    out = directory / "run"
    out.mkdir()
    with locked_folder(out):  # a first run holds the folder (here: this very process)
        return _run(out)


def _train_experts_into_a_pipeline(directory: Path) -> object:
    out = _copy_of_stored(directory)
    argv = ["train-experts", "--shared", str(out / "shared.safetensors"), "--domains", "english"]
    return _command([*argv, "--out", str(out), *TINY_CLI])


def _replaced_expert_file(directory: Path) -> object:
    from modularforge.pipeline.load import load_pipeline_mixture

    out = _copy_of_stored(directory)
    experts = sorted((out / "experts").iterdir())
    experts[0].write_bytes(experts[1].read_bytes())  # a loadable expert, but not this one
    return load_pipeline_mixture(out, 1)


def _manifest(directory: Path, text: str) -> object:
    out = directory / "run"
    out.mkdir()
    (out / "manifest.json").write_text(text)
    return _run(out)


def _manifest_version(directory: Path) -> object:
    manifest = json.loads((STORED_RUN / "manifest.json").read_text())
    return _manifest(directory, json.dumps({**manifest, "version": 999}))


def _read_only_stored_run(directory: Path) -> object:
    """The stored run's recorded files verify without a write; its missing dense baseline
    is work, refused before its first step because the storage takes no writes."""
    from modularforge.pipeline.run import PipelineSettings, run_pipeline

    out = _copy_of_stored(directory)
    recorded = json.loads((out / "manifest.json").read_text())["settings"]
    settings = PipelineSettings(**{**recorded, "top_k": tuple(recorded["top_k"])})
    with _read_only_storage():
        return run_pipeline(out, settings, log=lambda _: None)


def _disk_error_during_save(code: int) -> Any:
    def trigger(directory: Path) -> object:
        def failing(fd: int, data: Any) -> None:
            raise OSError(code, os.strerror(code))

        out = directory / "shared.safetensors"
        with (
            mock.patch("modularforge.files.atomic._write_all", failing),
            mock.patch("tempfile.gettempdir", lambda: str(directory)),
        ):
            return _command(["train-shared", "--out", str(out), *TINY_CLI])

    trigger.__name__ = f"_{errno.errorcode[code].lower()}_during_save"
    return trigger


def _name_too_long(directory: Path) -> object:
    return _command(["train-shared", "--out", str(directory / ("a" * 300)), *TINY_CLI])


def _pipeline_out_a_file(directory: Path) -> object:
    out = directory / "results.txt"
    out.write_text("my results")
    return _command(["pipeline", "--out", str(out), "--no-progress"])


def _device(name: str) -> Any:
    def trigger(directory: Path) -> object:
        out = directory / "shared.safetensors"
        return _command(["train-shared", "--out", str(out), "--device", name, *TINY_ARGS])

    trigger.__name__ = f"_device_{name}"
    return trigger


def _absurd_batch(directory: Path) -> object:
    out = directory / "shared.safetensors"
    argv = ["train-shared", "--out", str(out), "--batch-size", "2000000000", "--seq-len", "128"]
    with mock.patch(
        "modularforge.training.preflight.machine_memory_bytes", lambda device: 16 * 10**9
    ):
        return _command([*argv, "--device", "cpu", "--no-progress"])


def _diverged(directory: Path) -> object:
    out = directory / "shared.safetensors"
    argv = ["train-shared", "--out", str(out), "--lr", "1e30", "--steps", "4", "--batch-size"]
    return _command([*argv, "2", "--seq-len", "16", "--device", "cpu", "--no-progress"])


def _budget_too_long(directory: Path) -> object:
    return _command(["budget", "--preset", "tiny", "--seq-len", "512"])


# --------------------------------------------------------------------------- the catalogue

_ONE_LINE = "the one line it printed says what to do"

PIPELINE_FAULTS: list[Fault] = [
    Fault(
        area="pipeline",
        symptom="`<out>/state` is a symbolic link to a folder of yours",
        trigger=_linked_state_folder,
        error=UnsafeOutputError,
        message="is a symbolic link; the pipeline writes and deletes only inside",
        fix="remove the link: the pipeline never writes or deletes outside `--out`",
    ),
    Fault(
        area="cli",
        symptom="`train-expert --out` the same file as `--shared`",
        trigger=_out_is_the_trunk,
        error=CommandLineError,
        message="writing it would replace an input",
        fix="choose another `--out`; nothing was trained or written",
    ),
    Fault(
        area="cli",
        symptom="`--out` in a folder that does not exist",
        trigger=_out_in_a_missing_folder,
        error=CommandLineError,
        message="the folder to write into does not exist",
        fix="create the folder; checked before the first training step, so no work is lost",
    ),
    Fault(
        area="pipeline",
        symptom="the disk fills up just as the finished trunk is saved",
        trigger=_disk_full_at_the_save,
        error=UnsavedWorkError,
        message="it was saved to",
        fix="move the rescued file into place once there is space",
    ),
    Fault(
        area="pipeline",
        symptom="`eval_max_batches = 0`, found only after all the training",
        trigger=lambda directory: _settings(eval_max_batches=0),
        error=SettingsError,
        message="eval_max_batches must be",
        fix="every setting is checked before any work; rerun with a valid value",
    ),
    Fault(
        area="pipeline",
        symptom="a NaN `aux_loss_weight`",
        trigger=lambda directory: _settings(aux_loss_weight=float("nan")),
        error=SettingsError,
        message="aux_loss_weight",
        fix="give a finite weight >= 0 (0 turns the balancing loss off)",
    ),
    Fault(
        area="training",
        symptom="a pipeline's training state whose `step` was edited to 10^9",
        trigger=_tampered_state,
        error=Recovered,
        message="set aside as expert-1.state.safetensors.bad",
        fix="nothing: the state is kept aside for a look and the expert retrains from step 0",
    ),
    Fault(
        area="training",
        symptom="a pipeline's training state overwritten with zeros",
        trigger=_garbage_state,
        error=Recovered,
        message="does not load as a training state",
        fix="nothing: set aside and retrained, so the folder is never blocked",
    ),
    Fault(
        area="pipeline",
        symptom="a second run started on a folder a running one holds",
        trigger=_second_run,
        error=FolderLockedError,
        message="is in use by process",
        fix="wait for the first run, stop it, or choose another `--out`",
    ),
    Fault(
        area="cli",
        symptom="`train-experts --out` a pipeline's folder",
        trigger=_train_experts_into_a_pipeline,
        error=CommandLineError,
        message="train-experts would overwrite it",
        fix="choose another `--out`: the pipeline's manifest is left as it was",
    ),
    Fault(
        area="mixture",
        symptom="a finished pipeline folder with one expert file replaced by another",
        trigger=_replaced_expert_file,
        error=CheckpointError,
        message="is not the expert 0",
        fix="rerun the pipeline into the folder: it retrains what changed",
    ),
    Fault(
        area="pipeline",
        symptom="`manifest.json` holding a list",
        trigger=lambda directory: _manifest(directory, "[1, 2, 3]"),
        error=ManifestError,
        message="manifest.json",
        fix="restore the manifest, or start the run in a fresh folder",
    ),
    Fault(
        area="pipeline",
        symptom="`manifest.json` cut off mid-way",
        trigger=lambda directory: _manifest(directory, '{"format": "modularforge-pipeline", "ph'),
        error=ManifestError,
        message="is not valid JSON",
        fix="restore the manifest, or start the run in a fresh folder",
    ),
    Fault(
        area="pipeline",
        symptom="`manifest.json` of version 999",
        trigger=_manifest_version,
        error=ManifestError,
        message="version",
        fix="use the modularforge that wrote it, or rerun in a fresh folder",
    ),
    Fault(
        area="pipeline",
        symptom="the stored run, its dense baseline left out, rerun from read-only storage",
        trigger=_read_only_stored_run,
        error=OSError,
        message="cannot write into this folder",
        fix="verifying needs no write; only the missing work does, so copy the folder somewhere writable",
    ),
    *(
        Fault(
            area="cli",
            symptom=f"{os.strerror(code)} ({errno.errorcode[code]}) while saving",
            trigger=_disk_error_during_save(code),
            error=CommandLineError,
            message=os.strerror(code),
            fix=_ONE_LINE + " (the target is unchanged)",
        )
        for code in (errno.ENOSPC, errno.EROFS, errno.EIO)
    ),
    Fault(
        area="cli",
        symptom="an `--out` name of 300 characters",
        trigger=_name_too_long,
        error=CommandLineError,
        message="too long",
        fix="choose a shorter path",
    ),
    Fault(
        area="cli",
        symptom="`pipeline --out` an existing file",
        trigger=_pipeline_out_a_file,
        error=CommandLineError,
        message="is not a folder",
        fix="give a folder path; the file is left as it was",
    ),
    *(
        Fault(
            area="cli",
            symptom=f"`--device {name}`",
            trigger=_device(name),
            error=CommandLineError,
            message="device",
            fix="use `cpu` or `cuda`",
        )
        for name in ("bogus", "meta")
    ),
    Fault(
        area="cli",
        symptom="`--batch-size 2000000000` on a machine with 16 GB",
        trigger=_absurd_batch,
        error=CommandLineError,
        message="lower --batch-size",
        fix="lower `--batch-size` or `--seq-len`; measured before the first step",
    ),
    Fault(
        area="cli",
        symptom="`--lr 1e30`: the loss diverges",
        trigger=_diverged,
        error=CommandLineError,
        message="training diverged",
        fix="lower `--lr`; nothing is saved from a diverged run",
    ),
    Fault(
        area="cli",
        symptom="`budget --preset tiny --seq-len 512`",
        trigger=_budget_too_long,
        error=CommandLineError,
        message="budget.seq_len",
        fix="leave `--seq-len` out: the defaults follow the preset (128 for tiny)",
    ),
]

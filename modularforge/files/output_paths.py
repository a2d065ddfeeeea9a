"""Output paths, checked before any work: not an input, and writable.

Two ways a run loses work before it even starts:

* an output that is one of the inputs (`train-expert --out trunk.safetensors
  --shared trunk.safetensors`) silently replaces the input with the result;
* an output location that cannot be written (a missing folder, a folder given
  where a file belongs, an empty string, a read-only place) was found only when the
  finished model was saved, so the training was lost.

Both are decided here, from the paths alone, before the first training step.
What no check can foresee (the disk fills, or fails, during the final save) is
handled by `save_or_rescue`: the finished result is written next to the target,
or into the temporary folder, and the error says where it went.
"""

from __future__ import annotations

import errno
import os
import secrets
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """True when `a` and `b` name one file: the same path after links, or one inode."""
    a, b = Path(a), Path(b)
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)  # hard links and bind mounts too
    except OSError:
        pass
    return os.path.realpath(a) == os.path.realpath(b)


def refuse_outputs_among_inputs(
    outputs: Mapping[str, Iterable[str | os.PathLike[str]]],
    inputs: Mapping[str, Iterable[str | os.PathLike[str]]],
) -> None:
    """Raise `ValueError` when a file a command writes is a file it reads.

    `outputs` maps an option (e.g. "--out") to every path it writes (for a folder
    output, the files written in it); `inputs` maps an option to the paths it reads.
    """
    for out_name, out_paths in outputs.items():
        for out_path in out_paths:
            for in_name, in_paths in inputs.items():
                for in_path in in_paths:
                    if same_file(out_path, in_path):
                        raise ValueError(
                            f"{out_name} {out_path} is also {in_name} {in_path}: writing it "
                            f"would replace an input; choose another {out_name}"
                        )


def check_writable_file(path: str | os.PathLike[str], option: str = "--out") -> Path:
    """Refuse, before training, a file path that cannot be written; return it.

    Tries what the save will do: create a temporary file next to the target (in the
    same folder, as `atomic.py` does) and remove it.
    """
    text = os.fspath(path)
    if not text.strip():
        raise ValueError(f"{option} is empty; give a file path")
    target = Path(text)
    if target.is_dir():
        raise IsADirectoryError(
            errno.EISDIR, f"{option} is a folder; give a file path inside it", str(target)
        )
    if target.exists() and not target.is_file():
        raise ValueError(f"{option} {target} exists and is not a regular file")
    check_writable_dir(target.parent, option)
    return target


def check_writable_dir(path: str | os.PathLike[str], option: str = "--out") -> Path:
    """Refuse, before training, a folder that does not exist or cannot be written into."""
    text = os.fspath(path)
    if not text.strip():
        raise ValueError(f"{option} is empty; give a folder path")
    folder = Path(text)
    if not folder.exists():
        raise FileNotFoundError(
            errno.ENOENT, f"{option}: the folder to write into does not exist", str(folder)
        )
    if not folder.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, f"{option}: not a folder", str(folder))
    probe = folder / f".modularforge-write-probe-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as error:
        raise type(error)(
            error.errno, f"{option}: cannot write into this folder ({error.strerror})", str(folder)
        ) from None
    os.close(fd)
    probe.unlink()
    return folder


def check_output_folder(path: str | os.PathLike[str], option: str = "--out") -> Path:
    """Refuse a folder output that cannot be written, or made (its nearest existing parent)."""
    text = os.fspath(path)
    if not text.strip():
        raise ValueError(f"{option} is empty; give a folder path")
    folder = Path(text)
    if folder.exists():
        return check_writable_dir(folder, option)
    ancestor = folder.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise NotADirectoryError(
            errno.ENOTDIR,
            f"{option}: {ancestor} is a file, so the folder cannot be made",
            str(folder),
        )
    check_writable_dir(ancestor, option)
    return folder


def nonempty_path(text: str) -> Path:
    """argparse `type=` for output paths: `Path("")` would silently mean the current folder."""
    import argparse

    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path; give a file or folder path")
    return Path(text)


class UnsavedWorkError(OSError):
    """The finished result could not be written where asked; the message says where it is."""

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"


def rescue_path(target: Path, folder: Path) -> Path:
    """`<stem>.unsaved<suffix>` in `folder` (`.unsaved-2`, ... if taken): no name the package reads."""
    from modularforge.files.state_recovery import first_free

    return first_free(folder, f"{target.stem}.unsaved", target.suffix)


def save_or_rescue(
    save: Callable[[Path], Path],
    target: str | os.PathLike[str],
    what: str,
    state: Path | None = None,
) -> Path:
    """`save(target)`; if the storage refuses it, save elsewhere and raise `UnsavedWorkError`.

    Why: the write checks before training cannot foresee a disk that fills up or
    fails during the final save, and then hours of training would vanish with a
    traceback. The result is written next to the target (a refused rename or a
    failing file may leave the folder usable) or else into the temporary folder, and
    the error names that file and how to put it in place. When no place takes it,
    the error says so, and names the training state `state` if one is kept (a rerun
    resumes from it).
    """
    target = Path(target)
    try:
        return save(target)
    except OSError as error:
        first = error
    reason = first.strerror or str(first)
    tried = []
    for folder in dict.fromkeys([target.parent, Path(tempfile.gettempdir())]):
        rescue = rescue_path(target, folder)
        try:
            save(rescue)
        except OSError as error:
            tried.append(f"{rescue} ({error.strerror or error})")
            continue
        raise UnsavedWorkError(
            first.errno,
            f"could not write the {what} ({reason}); it was saved to {rescue} instead: "
            f"move it to {target} once the storage works",
            str(target),
        ) from first
    kept = (
        f"the training state {state} is kept, so rerunning the same command resumes from it"
        if state is not None and state.is_file()
        else "the trained weights are lost"
    )
    raise UnsavedWorkError(
        first.errno,
        f"could not write the {what} ({reason}), nor save it elsewhere "
        f"(tried {'; '.join(tried)}); {kept}",
        str(target),
    ) from first

"""What the command line prints for an error: one clear line, never a traceback the user can't use.

`describe` is the one mapping from an exception to that line. It covers what a
user or their machine can cause: wrong settings and files (`ValueError` and the
package's own errors, which already name the file and the fix), a folder in use
by another run, the operating system's refusals (no space left, read-only
storage, an I/O error, a name too long, a file where a folder belongs), running
out of memory, and a diverged loss. Anything else is a bug in the package, and
keeps its traceback.
"""

from __future__ import annotations

import errno
import os

#: Exit status for an error the user can fix (argparse uses 2 for its own).
USER_ERROR = 2
#: Exit status after Ctrl-C, as shells report it (128 + SIGINT).
INTERRUPTED = 130
#: Exit status after SIGTERM (a `kill`, a scheduler's stop, a container's shutdown): 128 + 15.
TERMINATED = 143


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the command is, so it stops as Ctrl-C does: saves intact."""


def raise_terminated(signum: int, frame: object) -> None:
    """A SIGTERM handler: unwind like Ctrl-C instead of dying mid-step without a word."""
    raise Terminated()


_OS_HINTS = {
    errno.ENOSPC: "the disk is full; free space or choose another location (the file "
    "there, if any, is unchanged)",
    errno.EDQUOT: "the disk quota is exhausted; free space or choose another location",
    errno.EROFS: "the storage is read-only; choose a writable location",
    errno.EIO: "an input/output error: the disk or network storage failed; check it and rerun",
    errno.ENAMETOOLONG: "a file name is too long for this filesystem; choose a shorter path",
    errno.EEXIST: "something is already there; choose another path or move it away",
    errno.ENOTDIR: "a file stands where a folder was expected; give a folder path",
    errno.EISDIR: "a folder stands where a file was expected; give a file path",
    errno.ENOENT: "does not exist; check the path",
    errno.EACCES: "permission denied; choose a location you may write",
    errno.EPERM: "operation not permitted; choose a location you may write",
    errno.ELOOP: "too many symbolic links; give the real path",
}


def _os_line(error: OSError) -> str:
    where = error.filename if error.filename is not None else ""
    if error.filename2 is not None:
        where = f"{where} -> {error.filename2}"
    what = error.strerror or os.strerror(error.errno) if error.errno else str(error)
    hint = _OS_HINTS.get(error.errno, "")
    parts = [f"{where}: {what}" if where else what]
    if hint and hint.split(";")[0].lower() not in what.lower():
        parts.append(hint)
    return "; ".join(parts)


def _is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, MemoryError):
        return True
    oom = getattr(__import__("torch"), "OutOfMemoryError", ())
    if oom and isinstance(error, oom):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text or "not enough memory" in text
    )


def describe(error: BaseException) -> str | None:
    """The one line to print for `error`, or None when it is a bug (keep the traceback)."""
    from modularforge.files.output_paths import UnsavedWorkError
    from modularforge.files.run_lock import FolderLockedError
    from modularforge.training.train import TrainingDivergedError

    if isinstance(error, UnsavedWorkError):  # says itself where the work went
        return str(error)
    if isinstance(error, TrainingDivergedError):
        return f"training diverged: {error}"
    if isinstance(error, FolderLockedError):
        return str(error)
    if _is_out_of_memory(error):
        first = str(error).strip().splitlines()[0] if str(error).strip() else "MemoryError"
        return f"out of memory ({first[:200]}); lower --batch-size or --seq-len"
    if isinstance(error, OSError) and error.errno is not None:
        return _os_line(error)
    if isinstance(error, ValueError | OSError):  # the package's errors name the file and fix
        return str(error) or type(error).__name__
    return None


def exit_line(error: BaseException) -> tuple[int, str] | None:
    """(exit status, line) for the CLI, or None to re-raise."""
    if isinstance(error, KeyboardInterrupt):
        status = TERMINATED if isinstance(error, Terminated) else INTERRUPTED
        return status, "interrupted; rerun the same command to resume from the last save"
    line = describe(error)
    if line is None:
        return None
    return USER_ERROR, " ".join(line.split())  # exactly one line

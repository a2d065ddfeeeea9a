"""Crash-safe file writes: the target holds either the old bytes or the new ones, never half.

A checkpoint written in place (open, write, close) is destroyed if the process is
killed mid-write: the old file is already truncated and the new one is incomplete.
Here the bytes go to a temporary file in the *same directory* (so the final rename
never crosses a filesystem), are flushed to disk, and only then renamed over the
target with `os.replace`, which is atomic on POSIX and Windows. The directory is
fsynced afterwards so that the rename itself survives a power cut.

A save that is killed leaves its temporary file behind; the next save of the same
target removes such leftovers, so they cannot pile up next to the checkpoint.
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import stat
import time
from pathlib import Path

from modularforge.files.regular_file import SpecialFileError, file_kind

#: A leftover temp file is stale once it is this old, even if its pid looks alive
#: (pids are reused, e.g. after a reboot, so a live pid alone proves nothing forever).
STALE_AFTER_S = 3600.0
#: Longest target name kept whole in a temp name (255 bytes minus the temp's additions).
_MAX_KEPT_NAME_BYTES = 200


def temp_prefix(path: Path) -> str:
    """Name prefix of the temporary files used while writing `path`: `.{name}.tmp-`.

    The leading dot hides them from `ls` and from globs such as `*.safetensors`,
    so a half-written file is never mistaken for a checkpoint. A name so long that
    the temp name would pass the filesystem's 255-byte limit is shortened (its head
    plus a hash of the whole name), so every name that fits can be written.
    """
    name = path.name
    if len(name.encode("utf-8")) > _MAX_KEPT_NAME_BYTES:
        head = name.encode("utf-8")[:80].decode("utf-8", "ignore")
        name = f"{head}~{hashlib.sha256(name.encode('utf-8')).hexdigest()[:16]}"
    return f".{name}.tmp-"


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes | bytearray | memoryview) -> Path:
    """Write `data` to `path` atomically and durably; return the target path.

    On any exception (including KeyboardInterrupt) the temporary file is removed
    and an existing file at `path` is left exactly as it was.
    """
    target = Path(path)
    _check_target(target)
    remove_stale_temp_files(target)
    temp = target.parent / f"{temp_prefix(target)}{os.getpid()}-{secrets.token_hex(4)}"
    try:
        # O_EXCL: never reuse (and so never clobber) a file that already exists.
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as error:  # nothing was created; name the user's path, not the temp's
        raise type(error)(error.errno, error.strerror, str(target)) from None
    try:
        try:
            _write_all(fd, data)
            os.fsync(fd)  # the bytes are on disk before the rename makes them visible
        finally:
            os.close(fd)
        os.replace(temp, target)
    except OSError as error:
        _discard(temp)
        raise type(error)(error.errno, error.strerror, str(target)) from error
    except BaseException:
        _discard(temp)
        raise
    _fsync_directory(target.parent)
    return target


def _discard(temp: Path) -> None:
    """Remove a temp file after a failed save, never raising a second error over the first.

    On storage that went read-only or failed mid-write the removal can fail too; the
    first error is the one to report, and the leftover is removed by the next save.
    """
    try:
        temp.unlink(missing_ok=True)
    except OSError:
        pass


def remove_stale_temp_files(path: str | os.PathLike[str]) -> list[Path]:
    """Delete temp files that earlier, killed saves of `path` left behind; return them.

    A temp file is kept while the process that is writing it (the pid in its name)
    is alive and the file is recent: two processes saving the same target must not
    delete each other's in-progress writes.
    """
    target = Path(path)
    removed = []
    prefix = temp_prefix(target)
    for candidate in target.parent.glob(f"{_glob_escape(prefix)}*"):
        if candidate.is_file() and _is_stale(candidate, prefix):
            try:
                candidate.unlink()
            except FileNotFoundError:  # its writer finished or another cleaner was faster
                continue
            except OSError:  # read-only or failing storage: the save itself will say so
                continue
            removed.append(candidate)
    return removed


def _check_target(target: Path) -> None:
    """Fail with the user's path in the message, not the temp file's."""
    if not target.parent.is_dir():
        raise FileNotFoundError(
            errno.ENOENT, "directory to write the file into does not exist", str(target.parent)
        )
    if target.is_dir():
        raise IsADirectoryError(errno.EISDIR, "cannot write a file over a directory", str(target))
    try:
        mode = os.lstat(target).st_mode
    except FileNotFoundError:
        return
    if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
        # The final rename would replace the node itself (a save to /dev/null would leave
        # a regular file there), so a special file is refused, never written over.
        raise SpecialFileError(
            f"{target} is {file_kind(mode)}, not a regular file: a save would replace it. "
            "Choose a path to a regular file, or a new name."
        )


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """`os.write` may write fewer bytes than asked; loop until everything is written."""
    view = memoryview(data).cast("B")
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_directory(directory: Path) -> None:
    """Persist the rename. Not possible on Windows, nor on some filesystems (EINVAL)."""
    if os.name == "nt":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as error:
        if error.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _is_stale(candidate: Path, prefix: str) -> bool:
    pid_text = candidate.name[len(prefix) :].split("-", 1)[0]
    if not pid_text.isdigit() or not _pid_alive(int(pid_text)):
        return True
    try:
        age = time.time() - candidate.stat().st_mtime
    except FileNotFoundError:
        return False
    return age > STALE_AFTER_S


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True  # another thread of this process may be writing it
    if pid <= 0:
        return False
    if os.name == "nt":
        return True  # no cheap check there; the age rule alone decides
    try:
        os.kill(pid, 0)  # signal 0: existence check only, nothing is sent
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    except OverflowError:
        return False
    return True


def _glob_escape(text: str) -> str:
    """Escape glob metacharacters so a file name like `run[1].safetensors` matches literally."""
    return "".join(f"[{char}]" if char in "*?[" else char for char in text)

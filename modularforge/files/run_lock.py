"""One run per output folder: an exclusive lock held for the run's whole lifetime.

Two pipeline runs started into the same `--out` (say, with different settings)
used to overwrite each other's trunk and experts, each recording its own files in
a manifest the other then rewrote. The lock is `flock` on `<out>/.modularforge.lock`:
the kernel releases it when the process ends, however it ends (SIGKILL included), so
a crashed run never leaves a folder locked. The file holds the holder's pid, which
the refusal names. The file itself stays (deleting a lock file races with the next
taker); its name starts with a dot and it ends in neither `.safetensors` nor `.json`.

A folder on read-only storage cannot hold a lock file, and needs none: no run can
write there either, so verifying a finished run from it proceeds unlocked.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock; runs there go unlocked
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".modularforge.lock"
#: errno values that mean "this folder cannot be written": no lock is needed there.
_READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)


class FolderLockedError(RuntimeError):
    """Another live process holds the folder's lock; the message names its pid."""


def lock_path(folder: str | os.PathLike[str]) -> Path:
    return Path(folder) / LOCK_NAME


def lock_holder(folder: str | os.PathLike[str]) -> int | None:
    """The pid recorded in the folder's lock file (None: none, or unreadable)."""
    try:
        text = lock_path(folder).read_text("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


@contextmanager
def locked_folder(folder: str | os.PathLike[str]) -> Iterator[bool]:
    """Hold `folder`'s exclusive lock inside the `with`; yields False if unlocked (read-only).

    Raises `FolderLockedError` at once (never waits) when another process holds it.
    """
    path = lock_path(folder)
    if fcntl is None:
        yield False
        return
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as error:
        if error.errno in _READ_ONLY and not path.is_symlink():
            yield False
            return
        if error.errno == errno.ELOOP:
            raise ValueError(
                f"{path} is a symbolic link; remove it (the lock is the run's own)"
            ) from None
        raise
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = lock_holder(folder)
            who = f"process {holder}" if holder is not None else "another process"
            raise FolderLockedError(
                f"{folder} is in use by {who} (lock {path}); wait for that run to finish, "
                "stop it, or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        yield True
    finally:
        os.close(fd)  # releases the lock

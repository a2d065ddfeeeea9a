"""Refuse anything that is not a regular file before reading it.

Why: `open()` on a FIFO blocks until some other process writes to it, and a
symlink to `/dev/zero` or `/dev/urandom` reads forever. A checkpoint, corpus or
tokenizer path that points at one of those would hang the program (or fill the
memory) instead of failing. So every file this package reads is first `stat`-ed
(following symlinks, which is what `open` would do) and refused unless it is a
regular file, and the opened descriptor is checked again with `fstat`, so a file
swapped for a FIFO between the two calls is refused too.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO

__all__ = ["SpecialFileError", "file_kind", "open_regular_file", "require_regular_file"]


class SpecialFileError(ValueError):
    """The path names a FIFO, a device, a socket or another non-regular file."""


def file_kind(mode: int) -> str:
    """Words for what a `st_mode` describes ("a FIFO (named pipe)", "a character device"...)."""
    kinds = (
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a directory"),
    )
    for test, words in kinds:
        if test(mode):
            return words
    return "not a regular file"


def require_regular_file(path: str | os.PathLike[str], what: str, hint: str = "") -> Path:
    """Return `path` if it names a readable regular file; otherwise raise, naming it.

    `what` says what the file was meant to be ("checkpoint file", "corpus file");
    `hint` is appended to the message and says how to fix it. Missing files raise
    `FileNotFoundError`, directories `IsADirectoryError`, unreadable files
    `PermissionError`, and FIFOs, devices and sockets `SpecialFileError`.
    """
    path = Path(path)
    suffix = f"; {hint}" if hint else ""
    try:
        mode = os.stat(path).st_mode  # follows symlinks, as open() would
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, f"{what} does not exist{suffix}", str(path)) from None
    except OSError as error:
        raise OSError(
            error.errno, f"{what} cannot be examined: {error.strerror}", str(path)
        ) from None
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, f"{what} path is a directory, not a file", str(path))
    if not stat.S_ISREG(mode):
        raise SpecialFileError(
            f"{path}: the {what} is {file_kind(mode)}, not a regular file; reading it could "
            f"block forever or never end, so it is refused{suffix}"
        )
    if not os.access(path, os.R_OK):
        raise PermissionError(
            errno.EACCES, f"{what} is not readable (permission denied)", str(path)
        )
    return path


def open_regular_file(path: str | os.PathLike[str], what: str, hint: str = "") -> BinaryIO:
    """`require_regular_file`, then open for binary reading without ever blocking.

    `O_NONBLOCK` makes opening a FIFO return at once instead of waiting for a
    writer; `fstat` on the open descriptor then refuses it if the path changed
    into something else after the first check.
    """
    path = require_regular_file(path, what, hint)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise SpecialFileError(
                f"{path}: the {what} became {file_kind(mode)} while being opened; refused"
            )
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise

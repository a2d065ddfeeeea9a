"""The C heap's bytes in use, sampled after every aten op: the reference CPU peak tracker.

PyTorch's CPU allocator takes tensor memory from malloc, so glibc's `mallinfo2`
sees tensor storage that tracemalloc (Python objects only) and the resident set
(pages touched, never given back) cannot. The book's peaks are measured with
`storage_tracker.StoragePeakTracker`, whose cost does not grow with the heap's
history; this tracker is what it is checked against.
"""

from __future__ import annotations

import ctypes
import ctypes.util

from torch.utils._python_dispatch import TorchDispatchMode


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _load_mallinfo2():
    """glibc's mallinfo2(), or None where it doesn't exist (macOS, musl, old glibc)."""
    path = ctypes.util.find_library("c")
    if path is None:
        return None
    try:
        function = ctypes.CDLL(path).mallinfo2
    except (OSError, AttributeError):
        return None
    function.restype = _Mallinfo2
    return function


_MALLINFO2 = _load_mallinfo2()


def heap_bytes_in_use() -> int:
    """Bytes the C heap has handed out: small blocks (uordblks) + mmapped ones (hblkhd).

    PyTorch's CPU allocator takes tensor memory from malloc, so this sees tensor
    storage that tracemalloc (Python objects only) and RSS (pages touched, never
    given back) cannot.
    """
    if _MALLINFO2 is None:
        raise RuntimeError(
            "heap_bytes_in_use needs glibc's mallinfo2 (Linux, glibc >= 2.33); "
            "on this platform measure peak memory on CUDA instead"
        )
    info = _MALLINFO2()
    return info.uordblks + info.hblkhd


class HeapPeakTracker(TorchDispatchMode):
    """Samples the heap after every aten op and keeps the highest value seen.

    Sampling after each op sees every tensor an op allocates; a transient that
    lives only inside one op (a kernel's scratch buffer) can be missed, which is
    why the book calls this a high-water mark "sampled per op".

    Each sample is one call of glibc's mallinfo2, which walks every free chunk of
    the heap: cheap in a fresh process, but in one whose heap has fragmented over
    a long life (hundreds of tests, a corpus loaded and dropped) a sample can cost
    twenty times more. The figures stay right, only slower. The book's peaks are
    therefore measured with `storage_tracker.StoragePeakTracker`, whose cost does
    not depend on the heap's history; this tracker stays as the reference it is
    checked against (tests/measure/test_storage_tracker.py).
    """

    def __init__(self) -> None:
        super().__init__()
        self.baseline = 0
        self.peak = 0

    def __enter__(self) -> HeapPeakTracker:
        self.baseline = heap_bytes_in_use()
        self.peak = self.baseline
        return super().__enter__()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        self.peak = max(self.peak, heap_bytes_in_use())
        return out

    @property
    def increase(self) -> int:
        """Highest heap use above the level at entry."""
        return self.peak - self.baseline

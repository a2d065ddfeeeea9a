"""One helper for tests that fix torch's intra-op thread count (imported by conftest too)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run with `n` intra-op threads, then restore the previous count.

    Tiny matmuls on 2 shared cores: one thread is faster than two spin-waiting
    for each other, and float sums depend on the thread count, so tests that
    compare runs bit for bit fix it.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)

"""What makes a rerun on the same machine give the same bits.

Three things decide a trained number on one machine: the seed, the number of
intra-op threads (float sums split across threads add up in another order), and
whether PyTorch may pick a non-deterministic kernel. `reproducible_session` fixes
all three, so a chapter run twice on one machine prints the same digits.

Another CPU is a different matter: ATen and the BLAS choose vector kernels by CPU
capability (AVX-512, AVX2, plain), and those round differently. A trained number
then lands near the book's, within a tolerance measured in the appendix
(`modularforge.measure.reproducibility`); counts, bytes, shapes and untrained
weights (`modularforge.model.init`) stay exact.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

THREADS_VARIABLE = "MODULARFORGE_NUM_THREADS"  # a reader's override of the chapters' thread count
CHAPTER_THREADS = 1  # the tiny preset's matmuls are too small for a second thread to pay


@dataclass(frozen=True)
class Session:
    """What `reproducible_session` set, for a reader who wants to check it."""

    seed: int
    threads: int
    deterministic: bool
    cpu_capability: str  # the vector kernels ATen uses here: DEFAULT, AVX2, AVX512, ...


def session_threads(threads: int | None = None) -> int:
    """The thread count to use: the argument, else $MODULARFORGE_NUM_THREADS, else 1."""
    if threads is None:
        raw = os.environ.get(THREADS_VARIABLE, "").strip()
        if not raw:
            return CHAPTER_THREADS
        try:
            threads = int(raw)
        except ValueError:
            raise ValueError(
                f"{THREADS_VARIABLE}={raw!r} is not a whole number; set it to a thread count "
                "such as 1 or 4, or unset it"
            ) from None
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= 1024:
        raise ValueError(f"threads must be an int from 1 to 1024, got {threads!r}")
    return threads


def reproducible_session(seed: int = 0, threads: int | None = None) -> Session:
    """Seed every generator, fix the thread count and ask for deterministic kernels.

    Call it once at the top of a notebook or script, before building a model.
    `CUBLAS_WORKSPACE_CONFIG` is set (if unset) because deterministic cuBLAS needs
    it before CUDA starts; on a CPU it does nothing.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an int from 0 to 2**63 - 1, got {seed!r}")
    n_threads = session_threads(threads)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.set_num_threads(n_threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(seed)
    return Session(
        seed=seed,
        threads=n_threads,
        deterministic=torch.are_deterministic_algorithms_enabled(),
        cpu_capability=torch.backends.cpu.get_cpu_capability(),
    )
